"""SFT vs DPO, side by side: one prompt, two streamed answers, and the reward DPO implicitly gives each.

    python -m app.compare                      # runs/sft/export vs the newest runs/dpo*/export*
    python -m app.compare --sft DIR --dpo DIR  # any two models sharing a tokenizer (folders, .gguf files)

The app in files: compare.py (this: which models, the command line) -> session.py (the two answers as
data: texts, token counts, speed, rewards) -> handlers.py (the page's handlers, thin) -> layout.py (the
Gradio page) ; votes.py (where a blind vote is saved) ; examples.py (which example prompts) ;
pick_examples.py (measures them). Loading is `minidpo.models`, sampling `minidpo.generation`, scoring
`minidpo.scoring`: the same code as `make eval`.
"""

from __future__ import annotations

import os

# Offline before gradio / transformers are imported: no analytics, no version check, no hub.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from app.handlers import Comparer  # noqa: E402,F401 - the names tests and users import from here
from app.layout import build_app, launch_kwargs  # noqa: E402,F401
from app.session import Stream  # noqa: E402,F401
from app.votes import DEFAULT_VOTES  # noqa: E402
from minidpo.config import ConfigError  # noqa: E402
from minidpo.flags import add_flag  # noqa: E402
from minidpo.generation import DEFAULTS, sample_next  # noqa: E402,F401
from minidpo.generation import SamplingSettings as GenSettings  # noqa: E402,F401 - the old name
from minidpo.models import DTYPE_CHOICES, OLD_DTYPE_NAMES, ModelError, check_model_folder, load_model  # noqa: E402,F401

CheckpointError = ModelError  # the old name
DEFAULT_RUNS_DIR = "runs"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def resolve_model_dirs(sft: str | None = None, dpo: str | None = None, runs_dir: str = DEFAULT_RUNS_DIR):
    """(sft_dir, dpo_dir) as Paths: the given sources (resolved by `minidpo.sources.hf_folder`), or the
    defaults of a local run: SFT = `<runs_dir>/sft/export`; DPO = the newest `<runs_dir>/dpo*/export*`
    folder holding a config.json. Raises ModelError saying what to run when missing."""
    from minidpo.sources import hf_folder

    runs = Path(runs_dir)
    if sft:
        sft_dir = Path(hf_folder(sft, role="--sft"))
    else:
        sft_dir = runs / "sft" / "export"
        if not (sft_dir / "config.json").is_file():
            raise ModelError(f"no SFT model at {sft_dir}: run `make sft` first, or pass --sft DIR (SFT=DIR for make app)")
    if dpo:
        dpo_dir = Path(hf_folder(dpo, role="--dpo"))
    else:
        found = [p for p in runs.glob("dpo*/export*") if (p / "config.json").is_file()]
        if not found:
            raise ModelError(f"no DPO export under {runs}/dpo*/export*: run `make train` first, "
                             "or pass --dpo DIR (DPO=DIR for make app)")
        dpo_dir = max(found, key=lambda p: (p / "config.json").stat().st_mtime)
    return sft_dir, dpo_dir


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m app.compare",
                                description="Compare an SFT and a DPO model side by side in a local Gradio page.")
    p.add_argument("--sft", metavar="DIR", help="SFT (reference) model folder or .gguf file [default: <runs_dir>/sft/export]")
    p.add_argument("--dpo", metavar="DIR", help="DPO model folder or .gguf file [default: newest <runs_dir>/dpo*/export*]")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder, for model files that carry none")
    add_flag(p, "runs_dir", old=("--runs-dir",), default=DEFAULT_RUNS_DIR,
             help="where the defaults are looked for [%(default)s]")
    p.add_argument("--beta", type=float, default=None,
                   help="β of the implicit reward [default: the DPO run's run_config.json, else 0.1]")
    p.add_argument("--votes", default=DEFAULT_VOTES, metavar="PATH", help="blind-vote JSONL file [%(default)s]")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="interface to serve on [%(default)s]; 0.0.0.0 exposes the app to your network")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="[%(default)s]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, … [%(default)s]")
    p.add_argument("--dtype", default="auto", choices=[*DTYPE_CHOICES, *OLD_DTYPE_NAMES],
                   help="auto = bf16/fp16 on GPU, fp32 on CPU [%(default)s] (old names float32, bfloat16, float16: "
                   "still accepted, to be removed in the next release)")
    add_flag(p, "max_new_tokens", old=("--max-new-tokens",), type=int, default=DEFAULTS.max_new_tokens,
             help="initial slider value [%(default)s]")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        sft_dir, dpo_dir = resolve_model_dirs(args.sft, args.dpo, args.runs_dir)
        check_model_folder(sft_dir, "SFT", tokenizer=args.tokenizer)
        check_model_folder(dpo_dir, "DPO", tokenizer=args.tokenizer)
        comparer = Comparer.from_dirs(sft_dir, dpo_dir, device=args.device, dtype=args.dtype, tokenizer=args.tokenizer,
                                      beta=args.beta, votes_path=args.votes)
    except ConfigError as exc:  # ModelError, SourceError: one line for people
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not comparer.shared_tokenizer:
        print("warning: the two models have different tokenizers; implicit rewards are disabled", file=sys.stderr)
    demo = build_app(comparer, default_max_new_tokens=args.max_new_tokens)
    print(f"SFT {sft_dir}  vs  DPO {dpo_dir}  (β = {comparer.beta:g} from {comparer.beta_source}, "
          f"votes -> {args.votes})")
    demo.queue().launch(**launch_kwargs(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
