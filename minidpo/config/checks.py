"""Cheap checks of a run config, before any model or data is loaded: each error is one line naming the setting."""

from __future__ import annotations

import math
import os

from minidpo.config.health import HealthSettings, check_health_settings
from minidpo.config.sections import (
    BAD_RECORD_POLICIES,
    CHAT_TEMPLATES,
    DTYPES,
    LOGPS_REDUCTIONS,
    REASONING_MODES,
    LossSettings,
    ReferenceSettings,
    RunConfig,
)
from minidpo.errors import ConfigError
from minidpo.losses import LISTWISE_LOSSES, check_kto_settings, check_loss_settings, loss_names, needs_reference

def _check_model_path(name: str, path: str, tokenizer: str | None) -> None:
    if path.endswith(".gguf"):  # converted to a Hugging Face folder once, by minidpo.sources
        if not os.path.isfile(path):
            raise ConfigError(f"--{name} {path}: no such GGUF file")
        return
    if path.endswith((".pth", ".pt")):  # a MiniMind state dict, converted once by minidpo.sources
        if not os.path.isfile(path):
            raise ConfigError(f"--{name} {path}: no such MiniMind checkpoint file")
        if not tokenizer:
            raise ConfigError(f"--{name} {path}: a MiniMind .pth holds no tokenizer: pass --tokenizer with "
                              "MiniMind's tokenizer folder (make ... TOKENIZER=../minimind/model)")
        return
    if not os.path.isdir(path):
        hint = " (run `make sft` to build the demo SFT model)" if path == RunConfig.model else ""
        raise ConfigError(f"--{name} {path}: not a folder{hint}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"--{name} {path}: no config.json, not a Hugging Face model folder")


def validate(cfg) -> None:
    """Cheap checks of every section the config has; each error is one line naming the setting."""
    for name in ("model", "ref_model"):
        path = getattr(cfg, name, None)
        if path is not None:
            _check_model_path(name, path, cfg.tokenizer)
    _check_data(cfg.data)
    if not os.path.isfile(cfg.deepspeed):
        raise ConfigError(f"--deepspeed {cfg.deepspeed}: no such file (see ds_configs/)")
    choices = [("dtype", DTYPES), ("chat_template", CHAT_TEMPLATES), ("on_bad_record", BAD_RECORD_POLICIES),
               ("answer_reasoning", REASONING_MODES)]
    if cfg.tools is not None and not os.path.isfile(cfg.tools):
        raise ConfigError(f"--tools {cfg.tools}: no such file (a JSON list of tool schemas)")
    if isinstance(cfg, LossSettings):
        choices.append(("logps_reduction", LOGPS_REDUCTIONS))
    for name, allowed in choices:
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"--{name} {getattr(cfg, name)}: choose one of {', '.join(allowed)}")
    if cfg.tokenizer is not None and not os.path.isdir(cfg.tokenizer):
        raise ConfigError(f"--tokenizer {cfg.tokenizer}: not a folder")
    if isinstance(cfg, LossSettings):
        _check_loss(cfg)
    for name in ("batch_size", "grad_accum", "epochs", "max_length", "log_interval", "keep_checkpoints"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    if not 0 < cfg.max_prompt_length < cfg.max_length:
        raise ConfigError(f"--max_prompt_length must be in (0, max_length={cfg.max_length}), got {cfg.max_prompt_length}")
    if cfg.learning_rate <= 0 or not 0 <= cfg.min_lr_ratio <= 1:
        raise ConfigError("--learning_rate must be > 0 and --min_lr_ratio in [0, 1]")
    check_token_budget(cfg.max_tokens_per_batch)
    if cfg.activation_checkpointing < 0:
        raise ConfigError(f"--activation_checkpointing {cfg.activation_checkpointing}: expected 0 (off) or n >= 1 "
                          "(every n-th layer)")
    if cfg.max_skipped_steps < 0 or cfg.dist_timeout <= 0 or not math.isfinite(cfg.dist_timeout):
        raise ConfigError("--max_skipped_steps must be >= 0 and --dist_timeout > 0 (seconds)")
    if isinstance(cfg, HealthSettings):
        check_health_settings(cfg)
    check_output_dir(cfg.output_dir)


def _check_data(data: str) -> None:
    """--data: a file or folder, or a comma-separated list of them (as minidpo.data.files.data_files reads it)."""
    if os.path.exists(data):
        return
    for part in [p.strip() for p in data.split(",") if p.strip()] or [data]:
        if not os.path.exists(part):
            raise ConfigError(f"--data {data}: " + ("" if part == data else f"{part}: ") + "no such file or folder")


def _check_loss(cfg) -> None:
    try:
        check_loss_settings(cfg.loss_type, cfg.beta, cfg.label_smoothing, cfg.rpo_alpha, loss_weights=cfg.loss_weights,
                            simpo_gamma=cfg.simpo_gamma, discopop_tau=cfg.discopop_tau,
                            f_divergence_type=cfg.f_divergence_type,
                            f_alpha_divergence_coef=cfg.f_alpha_divergence_coef, ld_alpha=cfg.ld_alpha,
                            use_weighting=cfg.use_weighting, logps_reduction=cfg.logps_reduction)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    _check_kto(cfg)
    _check_listwise(cfg)
    if isinstance(cfg, ReferenceSettings):
        _check_reference_sync(cfg)
    if not needs_reference(cfg.loss_type):  # nothing would read a reference model
        for name in ("ref_model", "precompute_ref", "sync_ref_model"):
            if getattr(cfg, name):
                raise ConfigError(f"--{name} does not apply: loss_type {','.join(loss_names(cfg.loss_type))} is "
                                  "reference-free (no reference model is loaded)")


def _check_kto(cfg) -> None:
    """KTO's settings apply to it alone; the paths it does not support fail here, not with wrong numbers."""
    if "kto" not in loss_names(cfg.loss_type):
        for name in ("desirable_weight", "undesirable_weight", "kto_kl"):
            if getattr(cfg, name) != getattr(LossSettings, name):
                raise ConfigError(f"--{name} only applies to loss_type kto")
        return
    try:
        check_kto_settings(cfg.desirable_weight, cfg.undesirable_weight, cfg.kto_kl)
    except ValueError as e:
        raise ConfigError(f"--{e}") from e
    unsupported = (("precompute_ref", "the reference is scored per batch, with its mismatched pairs"),
                   ("max_tokens_per_batch", "batches are batch_size examples"),
                   ("sync_ref_model", "TR-DPO is not implemented for it"))
    for name, why in unsupported:
        if getattr(cfg, name, None):
            raise ConfigError(f"--{name} is not supported with loss_type {','.join(loss_names(cfg.loss_type))} "
                              f"({why})")


def _check_listwise(cfg) -> None:
    """listwise_pairs / plackett_luce: the paths their K-answer rows do not take fail here, one line each."""
    names = [n for n in loss_names(cfg.loss_type) if n in LISTWISE_LOSSES]
    if not names:
        return
    if getattr(cfg, "sync_ref_model", None):
        raise ConfigError(f"--sync_ref_model is not supported with loss_type {names[0]} (TR-DPO is not implemented "
                          "for it)")
    if cfg.logps_reduction != "sum":
        raise ConfigError(f"--logps_reduction {cfg.logps_reduction} is not supported with loss_type {names[0]} "
                          "(its rewards are summed log-probs)")


def _check_reference_sync(cfg) -> None:
    """TR-DPO's settings (the LoRA-specific ones are checked by minidpo.lora.check_settings)."""
    if not cfg.sync_ref_model:
        for name in ("ref_model_mixup_alpha", "ref_model_sync_steps"):
            if getattr(cfg, name) != getattr(ReferenceSettings, name):
                raise ConfigError(f"--{name} only applies with --sync_ref_model true (TR-DPO)")
        return
    if cfg.precompute_ref:
        raise ConfigError("--precompute_ref cannot be used with --sync_ref_model: the reference changes during "
                          "training, so its log-probs cannot be computed once")
    if not 0.0 < cfg.ref_model_mixup_alpha <= 1.0:
        raise ConfigError(f"--ref_model_mixup_alpha must be in (0, 1] (1: hard copy), got {cfg.ref_model_mixup_alpha}")
    if cfg.ref_model_sync_steps < 1:
        raise ConfigError(f"--ref_model_sync_steps must be >= 1, got {cfg.ref_model_sync_steps}")


def check_token_budget(value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"--max_tokens_per_batch {value!r}: expected 0 (off) or a number of tokens >= 1")


def check_output_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--output_dir {path}: cannot create it ({e.strerror})") from e
    if not os.access(path, os.W_OK):
        raise ConfigError(f"--output_dir {path}: not writable")
