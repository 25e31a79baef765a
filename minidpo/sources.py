"""Model sources: every kind of model file a user may hold becomes a local Hugging Face folder.

Consumers (the trainer, eval, the app, scoring) only ever see Hugging Face folders. A source that is
not one is converted once into a cached folder, keyed on the file's content, so asking again is cheap:

    folder                      a Hugging Face causal-LM folder: returned as it is
    file.gguf                   llama.cpp GGUF (minidpo.gguf)
    file.pth                    a MiniMind weights or resume file, with `tokenizer=` (minidpo.minimind)
    adapter folder              a PEFT LoRA adapter: merged onto its base (minidpo.lora)

`hf_folder` is the one entry point; a new kind of source adds a branch here and nowhere else.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from minidpo.errors import ConfigError


class SourceError(ConfigError):
    """A model source cannot be used; the message names the path and what was expected."""


def hf_folder(path: str, *, tokenizer: str | None = None, role: str = "--model") -> str:
    """A local Hugging Face folder for `path` (converted and cached on first use).

    tokenizer: a tokenizer folder for sources that carry none (a bare state dict).
    role: how the setting is named in messages ("--model", "--ref_model", "--sft", ...).
    """
    path = str(path)
    if path.endswith(".gguf") or (os.path.isfile(path) and _is_gguf(path)):
        from minidpo.gguf import GGUFError, ensure_hf_folder

        try:
            return ensure_hf_folder(path)
        except GGUFError as e:
            raise SourceError(f"{role} {e}") from e
    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        from minidpo.lora import merged_folder

        return merged_folder(path, role=role)
    if is_minimind_path(path):
        from minidpo.minimind import MiniMindError, ensure_hf_folder as minimind_folder

        try:
            return minimind_folder(path, tokenizer)
        except MiniMindError as e:
            raise SourceError(f"{role} {e}") from e
    return path


def is_minimind_path(path: str) -> bool:
    """A MiniMind checkpoint: a bare PyTorch state dict (.pth / .pt)."""
    return str(path).endswith((".pth", ".pt"))


def _is_gguf(path: str) -> bool:
    from minidpo.gguf import is_gguf_file

    return is_gguf_file(path)


def cached_build(folder: str, build: Callable[[str], None], *, marker: str) -> str:
    """`folder`, made once by `build(tmp)`: written into a temporary sibling and renamed, so a killed
    conversion never leaves a half folder that looks done, and of two processes racing one wins.
    `marker` is the file inside that says the folder is complete."""
    if os.path.isfile(os.path.join(folder, marker)):
        return folder
    os.makedirs(os.path.dirname(os.path.abspath(folder)), exist_ok=True)
    tmp = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        if not os.path.isfile(os.path.join(folder, marker)):  # not finished by another process meanwhile
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same build first
            if not os.path.isfile(os.path.join(folder, marker)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
