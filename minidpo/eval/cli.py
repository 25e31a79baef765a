"""`python -m minidpo.eval`: the command line of `minidpo.eval.evaluate`."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from minidpo.errors import ConfigError, run_cli, set_offline_environment
from minidpo.eval import ifeval
from minidpo.eval.report import summary_lines
from minidpo.eval.run import evaluate
from minidpo.generation import DEFAULTS
from minidpo.models import DTYPE_CHOICES

IFEVAL_MAX_NEW_TOKENS = 512  # the figures of the model cards and of issue 26 are measured so


def load_judge(spec: str | None):
    """A judge from "package.module:function" (e.g. the demo's minidpo.demo.judge:judge_heldout); None: none."""
    if not spec or spec == "none":
        return None
    module, _, name = spec.partition(":")
    try:
        judge = getattr(importlib.import_module(module), name or "judge_heldout")
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--judge {spec}: cannot import it ({e}); expected package.module:function") from None
    if not callable(judge):
        raise ConfigError(f"--judge {spec}: not a function")
    return judge


def build_parser(prog: str = "python -m minidpo.eval", default_judge: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="Compare a DPO model with its SFT reference on held-out "
                                 "preference data: preference accuracy, judged behaviour, KL, sample answers.")
    ap.add_argument("--sft", required=True, help="SFT model: Hugging Face folder or .gguf file")
    ap.add_argument("--dpo", required=True, help="DPO model: Hugging Face folder or .gguf file")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder, for model files that carry none")
    ap.add_argument("--data", required=True, help="held-out preference data, any format the trainer reads; with "
                    "--benchmark ifeval: IFEval's input_data.jsonl (docs/ifeval.md)")
    ap.add_argument("--benchmark", choices=("ifeval",), default=None,
                    help="ifeval: greedy answers to IFEval's prompts, its four figures for both models, per kind, KL")
    ap.add_argument("--limit", type=int, default=None, help="--benchmark: the first N prompts only (a quick look)")
    ap.add_argument("--sft_answers", default=None,
                    help="--benchmark ifeval: an earlier run's answers_sft.jsonl (same data, SFT model, dtype and "
                    "max_new_tokens): only the DPO model answers")
    ap.add_argument("--data_format", default="auto", help="auto, or force a format (as for training)")
    ap.add_argument("--enable_thinking", choices=("true", "false"), default=None,
                    help="passed to the chat template, as the data setting of the same name (default: the template's)")
    ap.add_argument("--output_dir", required=True, help="folder for eval.json, eval.md and TensorBoard scalars")
    ap.add_argument("--beta", type=float, default=None,
                    help="the beta the DPO model was trained with (default: the DPO run's run_config.json, else 0.1)")
    ap.add_argument("--judge", default=default_judge,
                    help="package.module:function that judges answers (the demo's: minidpo.demo.judge:judge_heldout); "
                    "default: none, preference metrics, KL and sample answers only")
    ap.add_argument("--n_generate", type=int, default=160, help="held-out records to answer (and judge), stratified over axis x language (-1: all; 0: skip)")
    ap.add_argument("--max_new_tokens", type=int, default=DEFAULTS.max_new_tokens,
                    help=f"the sampler's default; with --benchmark ifeval: {IFEVAL_MAX_NEW_TOKENS} unless given")
    ap.add_argument("--temperature", type=float, default=DEFAULTS.temperature, help="0 = greedy")
    ap.add_argument("--top_p", type=float, default=DEFAULTS.top_p)
    ap.add_argument("--top_k", type=int, default=DEFAULTS.top_k, help="0 = off")
    ap.add_argument("--repetition_penalty", type=float, default=DEFAULTS.repetition_penalty, help="1 = off")
    ap.add_argument("--n_kl", type=int, default=64, help="prompts for the KL estimate (0: skip)")
    ap.add_argument("--n_examples", type=int, default=2, help="side-by-side answers per axis and language")
    ap.add_argument("--seed", type=int, default=DEFAULTS.seed)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    ap.add_argument("--dtype", default="fp32", choices=DTYPE_CHOICES,
                    help="fp32 (default: scores as exact as training's checks), bf16, fp16, or auto")
    ap.add_argument("--allow_pickle_weights", action="store_true",
                    help="accept model folders whose weights are only a pickle pytorch_model.bin")
    return ap


def run(argv=None, *, prog: str = "python -m minidpo.eval", default_judge: str | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(prog, default_judge).parse_args(argv)
    if args.benchmark == "ifeval":
        given = any(a.split("=")[0] == "--max_new_tokens" for a in argv)
        result = ifeval.evaluate_ifeval(
            args.sft, args.dpo, args.data, args.output_dir, tokenizer=args.tokenizer, device=args.device,
            dtype=args.dtype, max_new_tokens=args.max_new_tokens if given else IFEVAL_MAX_NEW_TOKENS,
            batch_size=args.batch_size, n_kl=args.n_kl,
            limit=args.limit, allow_pickle=args.allow_pickle_weights, sft_answers=args.sft_answers)
        print("\n".join(ifeval.summary_lines(result)))
        print(f"wrote {Path(args.output_dir) / 'eval.json'} and {Path(args.output_dir) / 'eval.md'}")
        return result
    result = evaluate(args.sft, args.dpo, args.data, args.output_dir, beta=args.beta, judge=load_judge(args.judge),
                      data_format=args.data_format, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype,
                      allow_pickle=args.allow_pickle_weights,
                      enable_thinking=None if args.enable_thinking is None else args.enable_thinking == "true",
                      n_generate=None if args.n_generate < 0 else args.n_generate, n_kl=args.n_kl,
                      n_examples=args.n_examples, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                      repetition_penalty=args.repetition_penalty, seed=args.seed)
    for line in summary_lines(result):
        print(line)
    print(f"beta {result['settings']['beta']:g} from {result['settings']['beta_source']}")
    print(f"wrote {Path(args.output_dir) / 'eval.json'} and {Path(args.output_dir) / 'eval.md'}")
    return result


def main(argv=None, **kwargs) -> dict:
    """`run`, with bad settings and data printed as one `error: ...` line (exit status 2)."""
    set_offline_environment()
    result = {}
    code = run_cli(lambda: result.update(run(argv, **kwargs)))
    if code:
        raise SystemExit(code)
    return result
