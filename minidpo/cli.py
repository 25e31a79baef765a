"""The `minidpo` command.

    minidpo data inspect FILE [--model PATH] [--max_length N] [--max_prompt_length N] [--data_format F]
    minidpo export-minimind RUN_OR_EXPORT OUT.pth
    minidpo doctor --model M --data D [--nproc N] [training flags]

Subcommands are registered in COMMANDS: each entry is a function that receives the `add_subparsers()`
object, adds its parser(s) and sets `func=` (called with the parsed args, returns an exit code).
Errors a user can fix are one `minidpo: error: ...` line (minidpo.errors.run_cli). The `func`s import
torch / transformers code themselves: heavy, and `minidpo --help` should answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from minidpo.config import CHAT_TEMPLATES, RunConfig, build_arg_parser
from minidpo.config.flags import config_from_flags
from minidpo.config.sections import REASONING_MODES
from minidpo.errors import ConfigError, run_cli, set_offline_environment


def _add_data_command(subparsers) -> None:
    data = subparsers.add_parser("data", help="look at preference data", description="Look at preference data.")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    p = data_sub.add_parser(
        "inspect",
        help="detected format, counts, length percentiles and one pair as the model sees it",
        description="Show a preference file's (or folder's) detected format, how many pairs are usable, "
        "skipped or dropped (with reasons), length percentiles of prompt / chosen / rejected, and one pair "
        "rendered as the model sees it with the masked prompt part marked. Without --model, lengths are "
        "in characters and the pair is shown in the plain fallback template.",
    )
    p.add_argument("file", help="a .json / .jsonl / .parquet / .arrow file, or a folder of them")
    p.add_argument("--model", help="a local model or tokenizer folder: token lengths, truncation and masks")
    p.add_argument("--max_length", type=int, default=1024, help="most tokens of prompt + answer (default 1024)")
    p.add_argument("--max_prompt_length", type=int, default=None, help="most prompt tokens (default: no limit)")
    p.add_argument("--data_format", default="auto",
                   help="auto (default), prompt, messages (MiniMind / TRL implicit), sharegpt, alpaca, trl, "
                   "hh (Anthropic HH-RLHF), ultrafeedback (UltraFeedback-binarized), openai (OpenAI preference records), "
                   "unpaired (KTO), listwise (K ranked answers), ultrafeedback_ratings / ultrafeedback_overall "
                   "(UltraFeedback's completions with ratings)")
    p.add_argument("--chat_template", choices=CHAT_TEMPLATES, default="auto",
                   help="auto (default): the model's chat template; none: raw prompt + answer + EOS (string data)")
    p.add_argument("--enable_thinking", choices=("true", "false"), default=None,
                   help="passed to the chat template (default: the template's own default)")
    p.add_argument("--answer_reasoning", choices=REASONING_MODES, default="as_given",
                   help="the answers' reasoning: as_given (default), strip, if_both (kept where both have it)")
    p.add_argument("--tools", default=None, help="a JSON file of tool schemas for records without their own")
    p.add_argument("--index", type=int, default=0, help="which pair to show (default 0)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="dim the masked prompt (auto: when printing to a terminal); otherwise [[brackets]]")
    p.set_defaults(func=_data_inspect)


def _data_inspect(args) -> int:
    from minidpo.data.inspect import inspect_report  # heavy (tokenizers): see the module docstring
    from minidpo.models import load_tokenizer  # the one loader: local files only, pad = EOS when missing

    tokenizer = None
    if args.model:
        if not os.path.isdir(args.model):
            raise ConfigError(f"--model {args.model!r} is not a folder (give a local model or tokenizer "
                              "folder; nothing is downloaded)")
        try:
            tokenizer = load_tokenizer(args.model)
        except ValueError as e:
            raise ConfigError(f"cannot load a tokenizer from {args.model!r} (a local folder with tokenizer files "
                              f"is needed; nothing is downloaded): {e}") from None
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    report, pairs = inspect_report(args.file, tokenizer, max_length=args.max_length,
                                   max_prompt_length=args.max_prompt_length, data_format=args.data_format,
                                   index=args.index, color=color, chat_template=args.chat_template,
                                   enable_thinking=None if args.enable_thinking is None else args.enable_thinking == "true",
                                   answer_reasoning=args.answer_reasoning, tools=args.tools)
    print(report)
    if not pairs:
        print(f"minidpo: error: {args.file}: no valid preference pair left (see the problems above)", file=sys.stderr)
        return 1
    return 0


def _add_export_minimind_command(subparsers) -> None:
    p = subparsers.add_parser(
        "export-minimind", help="write a trained model as a MiniMind .pth (fp16 state dict)",
        description="Write a run's Hugging Face export (or any Hugging Face folder of a MiniMind-shaped Qwen3, "
        "Qwen3-MoE or Llama model) as a MiniMind .pth: the fp16 state dict in MiniMind's key layout, experts "
        "unfused, which MiniMind's own scripts load with strict loading.")
    p.add_argument("source", metavar="RUN_OR_EXPORT", help="a run folder (its export/ is used) or a Hugging Face folder")
    p.add_argument("out", metavar="OUT.pth", help="the .pth file to write")
    p.set_defaults(func=_export_minimind)


def _export_minimind(args) -> int:
    from minidpo.sources.minimind import export_minimind, minimind_config_args

    spec = export_minimind(args.source, args.out)
    print(f"{args.out}: {spec.describe()}\nMiniMind's scripts take it with: {minimind_config_args(spec)}")
    return 0


def _add_doctor_command(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor", parents=[build_arg_parser(RunConfig)], add_help=False,
        help="check a model, data and settings before a run (one batch, memory, duration)",
        description="Before spending the GPU hours: shows one pair exactly as trained and the data summary, checks "
        "one batch (first loss at policy == reference, shared-prompt forward and fused head against the plain "
        "ones), estimates memory per rank, times a few steps of the real loop and predicts the run's duration. "
        "Takes every training flag. Exits 1 naming the failed checks (docs/health.md).")
    p.add_argument("--nproc", type=int, default=1, help="ranks the run will use (memory and duration per rank)")
    p.add_argument("--timing_steps", type=int, default=3, help="optimizer steps timed after the first")
    p.set_defaults(func=_doctor)


def _doctor(args) -> int:
    from minidpo.doctor import diagnose  # heavy (torch, deepspeed): see the module docstring

    if args.nproc < 1 or args.timing_steps < 1:
        raise ConfigError("--nproc and --timing_steps must be >= 1")
    return diagnose(config_from_flags(vars(args)), nproc=args.nproc, timing_steps=args.timing_steps)


COMMANDS: list[Callable] = [_add_data_command, _add_export_minimind_command, _add_doctor_command]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minidpo", description="Direct Preference Optimization on DeepSpeed.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    set_offline_environment()
    args = build_parser().parse_args(argv)
    return run_cli(lambda: args.func(args) or 0, prefix="minidpo: error: ")


if __name__ == "__main__":
    sys.exit(main())
