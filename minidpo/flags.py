"""One spelling of shared flags across train, sft, eval, app and `minidpo data inspect`: the run config's
names (`--output_dir`, `--batch_size`, `--max_new_tokens`, `--dtype bf16|fp16|fp32|auto`, ...).

Tools that used other spellings (`--out`, `--batch-size`, `--max-new-tokens`, ...) keep them as aliases
for one release; `--help` lists them under the flag with a note.
"""

from __future__ import annotations

import argparse


def add_flag(parser: argparse.ArgumentParser, name: str, *, old: tuple[str, ...] = (), **kwargs):
    """`--name` plus its old spellings `old` (e.g. "--out", "--batch-size"), kept for one release."""
    spellings = [f"--{name}", *old]
    if len(spellings) > 1 and kwargs.get("help") is not argparse.SUPPRESS:
        note = f"(old spelling {', '.join(spellings[1:])}: still accepted, to be removed in the next release)"
        kwargs["help"] = f"{kwargs.get('help', '')} {note}".strip()
    return parser.add_argument(*spellings, dest=name, **kwargs)
