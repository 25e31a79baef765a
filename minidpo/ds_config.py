"""The DeepSpeed JSON: read a file, fill its "auto" fields from the run config, refuse contradictions.

The JSON holds what DeepSpeed owns (ZeRO stage, offload, precision flags, bucket sizes); an explicit value
that disagrees with the run config is an error, so the two can never silently diverge.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from minidpo.errors import ConfigError

AUTO = "auto"


def _fill(section: dict, key: str, value, where: str, flag: str) -> None:
    """Fill an "auto" (or missing) field; an explicit value must agree with the run config."""
    current = section.get(key, AUTO)
    if current == AUTO:
        section[key] = value
    elif current != value:
        raise ConfigError(f"{where}: {key}={current!r} contradicts the run config's {flag}={value!r}; set it to \"auto\"")


def resolve_ds_config(path: str, cfg, world_size: int, on_cpu: bool) -> dict:
    """Read a DeepSpeed JSON and fill its "auto" fields from the run config."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--deepspeed {path}: cannot read JSON: {e}") from e
    ds = copy.deepcopy(raw)
    where = path
    if "scheduler" in ds:
        raise ConfigError(f"{where}: remove \"scheduler\"; the schedule comes from --learning_rate/--warmup_steps/--min_lr_ratio")

    _fill(ds, "train_micro_batch_size_per_gpu", cfg.batch_size, where, "--batch_size")
    _fill(ds, "gradient_accumulation_steps", cfg.grad_accum, where, "--grad_accum")
    _fill(ds, "train_batch_size", cfg.batch_size * cfg.grad_accum * world_size, where, "batch_size*grad_accum*world_size")
    _fill(ds, "gradient_clipping", cfg.max_grad_norm, where, "--max_grad_norm")

    for key, wanted in (("bf16", cfg.dtype == "bf16"), ("fp16", cfg.dtype == "fp16")):
        section = ds.setdefault(key, {})
        _fill(section, "enabled", wanted, f"{where} [{key}]", "--dtype")
    if cfg.dtype == "fp16":
        ds["fp16"].setdefault("loss_scale", 0)  # 0 = dynamic loss scaling
    if cfg.dtype == "fp16" and on_cpu:
        raise ConfigError("--dtype fp16 is not supported on CPU (DeepSpeed refuses it); use --dtype bf16")

    opt = ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    if str(opt.get("type", "")).lower() not in ("adamw", "adam"):
        raise ConfigError(f"{where}: optimizer type {opt.get('type')!r} is not supported; use \"AdamW\"")
    params = opt.setdefault("params", {})
    _fill(params, "lr", cfg.learning_rate, f"{where} [optimizer]", "--learning_rate")
    _fill(params, "betas", list(cfg.adam_betas), f"{where} [optimizer]", "--adam_betas")
    _fill(params, "eps", cfg.adam_eps, f"{where} [optimizer]", "--adam_eps")
    _fill(params, "weight_decay", cfg.weight_decay, f"{where} [optimizer]", "--weight_decay")

    zero = ds.setdefault("zero_optimization", {"stage": 0})
    offload = bool(zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None))
    if on_cpu and not offload:
        # DeepSpeed's default Adam is a CUDA fused kernel; on the CPU accelerator use torch's AdamW.
        params.setdefault("torch_adam", True)
    if not on_cpu and not offload:
        use_torch_adam_without_prebuilt_ops(params)
    if zero.get("stage", 0) == 3:
        # The Hugging Face export needs the full 16-bit weights gathered on save.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    ds.setdefault("steps_per_print", 10**9)  # our own metrics do the logging
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def use_torch_adam_without_prebuilt_ops(params: dict) -> None:
    """On a GPU, DeepSpeed's default Adam is its FusedAdam CUDA op, JIT-compiled with nvcc on first use
    unless DeepSpeed was installed with it prebuilt (DS_BUILD_FUSED_ADAM=1). A machine without a CUDA
    compiler cannot build it: there, use torch's own fused AdamW (the same update, no compiler)."""
    try:  # deepspeed is heavy: imported only when a GPU config is resolved
        from deepspeed.git_version_info import installed_ops
    except ImportError:
        installed_ops = {}
    if not installed_ops.get("fused_adam"):
        params.setdefault("torch_adam", True)
        if params["torch_adam"]:
            params.setdefault("fused", True)


def optimizer_name(ds_config: dict) -> str:
    """Which Adam a resolved DeepSpeed config runs, in words (for reports)."""
    params = ds_config.get("optimizer", {}).get("params", {})
    zero = ds_config.get("zero_optimization", {})
    if zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None):
        return "DeepSpeedCPUAdam (optimizer offload)"
    if params.get("torch_adam"):
        return "torch.optim.AdamW" + (" (fused)" if params.get("fused") else "")
    return "DeepSpeed FusedAdam (prebuilt op)"


def reference_ds_config(policy_ds: dict) -> dict:
    """Inference-only config for the frozen reference: same precision, partitioned only under ZeRO-3."""
    zero = policy_ds.get("zero_optimization", {})
    ref_zero = {"stage": 0}
    if zero.get("stage", 0) == 3:
        ref_zero = {"stage": 3}
        if "offload_param" in zero:
            ref_zero["offload_param"] = zero["offload_param"]
    keys = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size", "bf16", "fp16")
    ref = {k: copy.deepcopy(policy_ds[k]) for k in keys if k in policy_ds}
    ref.update(zero_optimization=ref_zero, steps_per_print=10**9)
    return ref
