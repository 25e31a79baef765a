"""Memory per rank before a run: model states from DeepSpeed's own ZeRO estimators, the reference's
weights, and activations measured on a probe batch of the longest pairs (what a step's peak holds)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

GIB = 2**30
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass
class MemoryEstimate:
    model_states: float  # bytes per rank: weights, gradients, optimizer states (trainable part)
    frozen: float  # frozen weights (LoRA's base) per rank
    reference: float  # the reference model's weights per rank
    activations: float  # saved for the backward of the largest micro-batch
    available: float  # this device's memory (a GPU's) or this machine's RAM shared by the ranks
    where: str

    @property
    def total(self) -> float:
        return self.model_states + self.frozen + self.reference + self.activations

    def lines(self) -> list[str]:
        rows = [("model states (weights, gradients, Adam)", self.model_states, "DeepSpeed's estimator"),
                ("frozen weights", self.frozen, ""), ("reference model", self.reference, ""),
                ("activations (largest micro-batch)", self.activations, "measured")]
        lines = [f"  {name:<42}{size(value):>12}" + (f"  ({how})" if how else "") for name, value, how in rows]
        return lines + [f"  {'total per rank':<42}{size(self.total):>12}  of {size(self.available)} {self.where}"]


def size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def model_states_bytes(trainable: int, largest_layer: int, stage: int, ranks: int, ds_config: dict) -> float:
    """Bytes per rank of a trainable model's states under ZeRO `stage` over `ranks` ranks, on the accelerator:
    DeepSpeed's estimators (mixed precision with fp32 Adam states; an fp32 run needs a little less)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs  # heavy: deepspeed
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    zero = ds_config.get("zero_optimization", {})
    offload = zero.get("offload_optimizer", {}).get("device", "none") == "cpu"
    if stage >= 3:
        offload_params = zero.get("offload_param", {}).get("device", "none") == "cpu"
        return float(estimate_zero3_model_states_mem_needs(trainable, largest_layer, ranks, 1, offload,
                                                           offload_params)[1])
    if stage >= 1:  # ZeRO-1 partitions less than ZeRO-2: its gradients stay whole on each rank
        extra_grads = 2 * trainable * (1 - 1 / ranks) if stage == 1 else 0
        return float(estimate_zero2_model_states_mem_needs(trainable, ranks, 1, offload)[1]) + extra_grads
    return float(estimate_zero2_model_states_mem_needs(trainable, 1, 1, offload)[1])  # ZeRO-0: nothing partitioned


def largest_layer_params(model) -> int:
    return max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)


def activation_bytes(model, batch: dict, forward) -> float:
    """Bytes the autograd graph keeps for the backward of `forward(model, batch)` (parameters excluded),
    counted once per storage: what activation memory a step holds at its peak."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward(model, batch)
    del out
    return float(sum(seen.values()))


def available_bytes(ranks: int) -> tuple[float, str]:
    """(memory one rank may use, where): a GPU's own memory, or this machine's RAM split over the ranks."""
    if torch.cuda.is_available():
        return float(torch.cuda.get_device_properties(0).total_memory), f"on {torch.cuda.get_device_name(0)}"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram / ranks, f"(this machine's RAM / {ranks} rank(s))"


def estimate(cfg, model, ds_config: dict, ranks: int, activations: float, reference_params: int) -> MemoryEstimate:
    """Per-rank memory of training `model` (already LoRA-wrapped when LoRA is on) with `cfg` on `ranks` ranks."""
    stage = zero_stage(ds_config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    width = DTYPE_BYTES[cfg.dtype]
    shard = ranks if stage >= 3 else 1  # ZeRO-3 partitions weights, frozen ones and the reference's too
    available, where = available_bytes(ranks)
    return MemoryEstimate(
        model_states=model_states_bytes(trainable, largest_layer_params(model), stage, ranks, ds_config),
        frozen=frozen * width / shard, reference=reference_params * width / shard, activations=activations,
        available=available, where=where)


def advice(cfg, stage: int) -> str:
    """What to change when the estimate does not fit, the cheapest first."""
    steps = []
    if not cfg.activation_checkpointing:
        steps.append("--activation_checkpointing 1")
    steps.append(f"--batch_size {max(1, cfg.batch_size // 2)} --grad_accum {cfg.grad_accum * 2}")
    if not cfg.precompute_ref and not cfg.lora_r:
        steps.append("--precompute_ref true (no reference model in memory)")
    if stage < 3:
        steps.append("--deepspeed ds_configs/zero3.json (partitions the weights too)")
    if not cfg.lora_r:
        steps.append("--lora_r 16")
    return "; ".join(steps)
