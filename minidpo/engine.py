"""DeepSpeed engines: the policy (optimizer, schedule, precision, ZeRO) and the frozen reference.

This module is the only place that calls `deepspeed.initialize`. Like OpenRLHF's strategy object it
owns engine creation for both models, so they always share precision and partitioning.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import socket
from collections import defaultdict

import torch

from minidpo.config import ConfigError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def launch_env(**extra: str) -> dict:
    """The environment for a training run started as a child process: this process's, without the
    rendezvous of a process group it may hold itself (its port is taken: the child would fail to listen)."""
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_VARS}
    env.update(extra)
    return env


def setup_distributed(timeout_s: float | None = None) -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed; works under `deepspeed`/`torchrun` and standalone.

    A plain `python trainer/train_dpo.py` has no launcher environment: we describe a world of one.
    timeout_s: how long a collective waits for the other ranks before it fails (a dead or hung rank).
    Returns (rank, world_size).
    """
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    # DeepSpeed JIT-compiles a small C++ op on CPU; cache it with the project instead of ~/.cache.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.abspath(".cache/torch_extensions"))
    import deepspeed
    import transformers

    # DeepSpeed logs every config key and memory figure at INFO; we print our own one-line summary.
    deepspeed.utils.logger.setLevel(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    from minidpo.faults import dist_timeout

    timeout = {"timeout": dist_timeout(timeout_s)} if timeout_s else {}
    deepspeed.init_distributed(dist_backend=None, verbose=False, **timeout)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def on_cpu() -> bool:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cpu"


def device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def warmup_cosine(total_steps: int, warmup_steps: int, min_lr_ratio: float):
    """lr multiplier for optimizer step s (0-based): linear warmup to 1, then cosine to min_lr_ratio."""

    def ratio(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return ratio


def _quiet_stdout():
    """ZeRO's optimizers print memory tables with print(); keep the console for our own progress."""
    return contextlib.redirect_stdout(io.StringIO())


def build_policy_engine(model: torch.nn.Module, ds_config: dict, lr_ratio):
    """Wrap the trainable model; the engine owns AdamW, the schedule, accumulation, clipping, precision."""
    import deepspeed

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
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

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
    import deepspeed

    model.requires_grad_(False)
    model.eval()
    with _quiet_stdout():
        engine, *_ = deepspeed.initialize(model=model, config=ds_config)
    engine.eval()
    return engine


def load_causal_lm(path: str, *, trainable: bool, activation_checkpointing: int = 0, allow_pickle: bool = False):
    """A local Hugging Face causal LM, loaded in float32 (DeepSpeed casts to the training precision).
    activation_checkpointing n > 0: every n-th decoder layer keeps only its input and recomputes the
    rest in the backward (n = 1: all layers, about a third more compute for much less activation memory)."""
    from minidpo.faults import refuse_pickle_only
    from minidpo.models import load_weights  # the one loader (one-line errors)

    refuse_pickle_only(path, allow_pickle)  # safetensors, or a pickle only when asked for
    model = load_weights(path, dtype=torch.float32)
    model.config.use_cache = False
    if trainable:
        model.train()
        if activation_checkpointing:
            enable_activation_checkpointing(model, int(activation_checkpointing))
    return model


def enable_activation_checkpointing(model, every_n_layers: int) -> None:
    if every_n_layers < 0:
        raise ConfigError(f"--activation_checkpointing {every_n_layers}: expected 0 (off) or n >= 1 (every n-th layer)")
    if not model.supports_gradient_checkpointing:
        raise ConfigError(f"--activation_checkpointing: {type(model).__name__} does not support it")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers)
    elif every_n_layers == 1:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ConfigError("--activation_checkpointing n > 1 needs a newer transformers; use 1 (every layer)")


def load_tokenizer(path: str):
    from minidpo.models import load_tokenizer as load  # local files only, pad token = EOS when missing

    return load(path)
