"""Resumable DeepSpeed checkpoints and Hugging Face exports.

Layout inside a run folder:
    checkpoints/latest                 tag of the newest checkpoint (written by DeepSpeed)
    checkpoints/step_00000100/         DeepSpeed model + optimizer + scheduler states, one RNG file per rank
    checkpoints/step_00000100/hf/      Hugging Face export of that step (save_pretrained + tokenizer)
    export/                            the final Hugging Face export
"""

from __future__ import annotations

import os
import random
import re
import shutil

import torch
import torch.distributed as dist

from minidpo import lora

TAG_RE = re.compile(r"^step_(\d+)$")


def checkpoints_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def step_tag(step: int) -> str:
    return f"step_{step:08d}"


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def export_hf(engine, tokenizer, out_dir: str) -> None:
    """Write a folder that `AutoModelForCausalLM.from_pretrained` loads. Collective under ZeRO-3."""
    state_dict = None
    if engine.zero_optimization_stage() == 3:
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # gathers the partitions on rank 0
    if dist.get_rank() == 0 and lora.is_lora(engine):  # the adapter, and the base with it merged in
        lora.export(engine, tokenizer, out_dir, state_dict)
    elif dist.get_rank() == 0:
        os.makedirs(out_dir, exist_ok=True)
        engine.module.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    dist.barrier()


def save(engine, tokenizer, output_dir: str, step: int, client_state: dict, *, keep: int, export: bool) -> str:
    """Checkpoint (and export) at optimizer step `step`; keep only the newest `keep` checkpoints."""
    root = checkpoints_dir(output_dir)
    tag = step_tag(step)
    engine.save_checkpoint(root, tag=tag, client_state=client_state)
    torch.save(_rng_state(), os.path.join(root, tag, f"rng_rank{dist.get_rank()}.pt"))
    if export:
        export_hf(engine, tokenizer, os.path.join(root, tag, "hf"))
    dist.barrier()
    if dist.get_rank() == 0:
        tags = sorted((t for t in os.listdir(root) if TAG_RE.match(t)), key=lambda t: int(TAG_RE.match(t)[1]))
        for old in tags[:-keep]:
            shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    dist.barrier()
    return os.path.join(root, tag)


def latest_tag(output_dir: str) -> str | None:
    path = os.path.join(checkpoints_dir(output_dir), "latest")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


def resume(engine, output_dir: str) -> dict:
    """Load the latest checkpoint into the engine; returns the client state saved with it."""
    tag = latest_tag(output_dir)
    if tag is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {checkpoints_dir(output_dir)} (no 'latest' file)")
    load_path, client_state = engine.load_checkpoint(checkpoints_dir(output_dir), tag=tag)
    if load_path is None:
        raise FileNotFoundError(f"--resume: DeepSpeed could not load checkpoint {tag} in {checkpoints_dir(output_dir)}")
    rng_file = os.path.join(checkpoints_dir(output_dir), tag, f"rng_rank{dist.get_rank()}.pt")
    if os.path.isfile(rng_file):
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return client_state
