"""Model sources: every kind of model file a user may hold becomes a local Hugging Face folder.

Consumers (the trainer, eval, the app, scoring) only ever see Hugging Face folders. A source that is
not one is converted once into a cached folder (`minidpo.fsutil.cache_dir(kind)`), so asking again is
cheap:

    folder                      a Hugging Face causal-LM folder: returned as it is
    file.gguf                   llama.cpp GGUF (minidpo.sources.gguf)
    file.pth                    a MiniMind weights or resume file, with `tokenizer=` (minidpo.sources.minimind)
    adapter folder              a PEFT LoRA adapter: merged onto its base, itself any source here
                                (minidpo.sources.adapter)

`hf_folder` is the one entry point; a new kind of source adds a module and a branch here, nowhere else.
Errors are `minidpo.errors.SourceError`, prefixed with the setting that named the source.
"""

from __future__ import annotations

import os

from minidpo.errors import SourceError
from minidpo.sources import adapter, gguf, minimind


def hf_folder(path: str, *, tokenizer: str | None = None, role: str = "--model") -> str:
    """A local Hugging Face folder for `path` (converted and cached on first use).

    tokenizer: a tokenizer folder for sources that carry none (a bare state dict).
    role: how the setting is named in messages ("--model", "--ref_model", "--sft", ...).
    """
    path = str(path)
    if path.endswith(".gguf") or (os.path.isfile(path) and gguf.is_gguf_file(path)):
        try:
            return gguf.ensure_hf_folder(path)
        except SourceError as e:
            raise SourceError(f"{role} {e}") from e
    if adapter.is_adapter_folder(path):
        base = hf_folder(adapter.resolve_base(path, role), role=f"{role} (base of {path})")
        return adapter.merged_folder(path, base, role=role)
    if is_minimind_path(path):
        try:
            return minimind.ensure_hf_folder(path, tokenizer)
        except SourceError as e:
            raise SourceError(f"{role} {e}") from e
    return path


def is_minimind_path(path: str) -> bool:
    """A MiniMind checkpoint: a bare PyTorch state dict (.pth / .pt)."""
    return str(path).endswith((".pth", ".pt"))
