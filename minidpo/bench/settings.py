"""The training settings every trainer in the bench uses (the issue's workload: batch 4, beta 0.1,
sigmoid loss, AdamW, clip 1.0, constant learning rate)."""

from __future__ import annotations

from dataclasses import dataclass

TRAINERS = ("minidpo", "minidpo-ac", "trl", "naive")  # minidpo-ac: minidpo with activation checkpointing
# minidpo-simpo: minidpo with the reference-free SimPO loss (no reference model, no reference pass), at the
# paper's starting point; a different objective, so outside the numerics check and the DPO targets
TRAINERS += ("minidpo-simpo",)
SIMPO = {"beta": 2.0, "simpo_gamma": 0.5}
TRAINERS += ("minidpo-lora",)  # minidpo with a LoRA adapter (LORA_R); the reference is the adapter switched off
LORA_R = 16
TRAINERS += ("minidpo-budget",)  # minidpo with --max_tokens_per_batch Settings.token_budget instead of batch_size
# minidpo-listwise: the workload's lists of LIST_K answers (workload.generate_lists), one row each, loss_type
# listwise_pairs, batch_size lists a step, the reference scored per batch (a listwise run cannot precompute it);
# minidpo-listwise-pairs: the same lists as their PAIRS_PER_LIST pairs each, trained as minidpo trains pairs
# (the `minidpo` row's settings: sigmoid, batch_size pairs a step, the reference precomputed). `listwise_settings`.
LISTWISE = ("minidpo-listwise", "minidpo-listwise-pairs")
TRAINERS += LISTWISE


@dataclass
class Settings:
    dtype: str = "bf16"       # bf16 | fp32: bf16 is mixed precision everywhere (fp32 master weights)
    threads: int = 2
    batch_size: int = 4
    beta: float = 0.1
    learning_rate: float = 5e-5
    max_grad_norm: float = 1.0
    max_length: int = 512
    max_prompt_length: int = 256
    seed: int = 0
    max_steps: int = -1       # -1: one epoch over the workload's pairs
    token_budget: int = 2048  # minidpo-budget only: packed positions per micro-batch


def listwise_settings(trainer: str, paths: dict) -> dict:
    """The RunConfig settings of a LISTWISE trainer that replace the bench's (`paths`: workload.workload_paths)."""
    if trainer == "minidpo-listwise":
        return {"data": paths["lists"], "loss_type": "listwise_pairs", "precompute_ref": False}
    return {"data": paths["list_pairs"]}
