"""DeepSpeed engines: the policy (optimizer, schedule, precision, ZeRO) and the frozen reference.

This module is the only place that calls `deepspeed.initialize`. Like OpenRLHF's strategy object it
owns engine creation for both models, so they always share precision and partitioning.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict

import torch


def on_cpu() -> bool:
    from deepspeed.accelerator import get_accelerator  # deepspeed is heavy: imported when training

    return get_accelerator().device_name() == "cpu"


def device() -> torch.device:
    from deepspeed.accelerator import get_accelerator  # deepspeed is heavy: imported when training

    return torch.device(get_accelerator().current_device_name())


def _quiet_stdout():
    """ZeRO's optimizers print memory tables with print(); keep the console for our own progress."""
    return contextlib.redirect_stdout(io.StringIO())


def build_policy_engine(model: torch.nn.Module, ds_config: dict, lr_ratio):
    """Wrap the trainable model; the engine owns AdamW, the schedule, accumulation, clipping, precision."""
    import deepspeed  # heavy: imported when an engine is built

    params = [p for p in model.parameters() if p.requires_grad]
    with _quiet_stdout():
        engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=params,
            config=ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_ratio),
        )
    _undo_unfused_init_step(engine)
    return engine


def _undo_unfused_init_step(engine) -> None:
    """ZeRO-0 + bf16/fp16 wraps the optimizer in FP16_UnfusedOptimizer, whose constructor takes one
    optimizer step on zero gradients to create the Adam state. That step applies weight decay to the
    fp32 master weights and advances Adam's step counter, so ZeRO-0 would diverge from ZeRO-1/2/3.
    Put the masters back to the model's weights and forget the state."""
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer  # heavy: see build_policy_engine

    wrapper = engine.optimizer
    if not isinstance(wrapper, FP16_UnfusedOptimizer):
        return
    with torch.no_grad():
        for low_group, master_group in zip(wrapper.fp16_groups, wrapper.fp32_groups):
            for low, master in zip(low_group, master_group):
                master.copy_(low.float())
    wrapper.optimizer.state = defaultdict(dict)


def build_reference_engine(model: torch.nn.Module, ds_config: dict):
    """The frozen reference: no optimizer, eval mode, no grad, same precision (and ZeRO-3 partitioning)."""
    import deepspeed  # heavy: imported when an engine is built

    model.requires_grad_(False)
    model.eval()
    with _quiet_stdout():
        engine, *_ = deepspeed.initialize(model=model, config=ds_config)
    engine.eval()
    return engine
