"""Run configuration: plain values in sections, settable from a JSON/YAML file and from flags (flags win).

Each section is a dataclass of the settings of one concern; a run config is the sections it needs:
`RunConfig` (DPO) has all of them, `SFTConfig` none of DPO's loss, reference or LoRA settings. The flag
and YAML names are the fields' names, flat (`--beta`, `lora_r: 16`), and `--help` lists them by section.
List-valued settings given as text ("sigmoid,sft", "1.0,0.5", "q_proj,v_proj") are parsed once, here.

Each field says what a resumed run may change (metadata "resume"): "same" (the checkpoint's value must
match), "content" (a path whose bytes must match) or "free". Sections set the default; the resume
fingerprint is derived from it (minidpo.checkpoint), so a new setting cannot be forgotten there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from minidpo.errors import ConfigError
from minidpo.losses import check_loss_settings, loss_names, needs_reference

DTYPES = ("bf16", "fp16", "fp32")
CHAT_TEMPLATES = ("auto", "none")
LOGPS_REDUCTIONS = ("sum", "mean")
BAD_RECORD_POLICIES = ("error", "skip")


def setting(default, help: str = " ", *, resume: str | None = None):  # noqa: A002 - argparse's word
    metadata = {"help": help} if resume is None else {"help": help, "resume": resume}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# --- sections -----------------------------------------------------------------------------------------

@dataclass
class ModelSettings:
    """What to train."""

    model: str = setting("runs/sft/export", "policy: a local Hugging Face causal-LM folder, a .gguf file or a "
                         "MiniMind .pth (with --tokenizer)", resume="content")
    tokenizer: str | None = setting(None, "tokenizer folder for a --model / --ref_model that carries none "
                                    "(a MiniMind .pth: its checkout's model/ folder)", resume="free")
    dtype: str = setting("bf16", "bf16 | fp16 (GPU only) | fp32")
    activation_checkpointing: int = setting(0, "0: off; n: recompute every n-th layer's activations in the backward "
                                            "(1: all layers, ~1/3 more compute, much less memory)", resume="free")
    allow_pickle_weights: bool = setting(False, "accept a model folder whose weights are only a pickle "
                                         "pytorch_model.bin (read with weights_only=True)", resume="free")


@dataclass
class DataSettings:
    """What to train on, and how it is rendered and cut."""

    data: str = setting("data/demo/train.jsonl", "preference data: JSON/JSONL/Parquet/Arrow file or folder",
                        resume="content")
    data_format: str = setting("auto", "auto, or force a format (docs/data.md)")
    on_bad_record: str = setting("error", "error | skip", resume="free")
    chat_template: str = setting("auto", "auto: the tokenizer's chat template (prompts already templated are used "
                                 "as they are); none: raw prompt + answer + EOS (TRL's string data)")
    max_length: int = 512
    max_prompt_length: int = 256


@dataclass
class LossSettings:
    """The preference objective (minidpo.losses, docs/losses.md)."""

    beta: float = 0.1
    loss_type: str | list[str] = setting("sigmoid", "sigmoid (DPO) | hinge | ipo | robust | exo_pair | nca_pair | "
                                         "sppo_hard | apo_zero | apo_down | discopop | simpo | cpo | orpo, or a mix: "
                                         "sigmoid,sft (docs/losses.md)")
    label_smoothing: float = setting(0.0, "label-noise rate of sigmoid (cDPO), robust, exo_pair")
    rpo_alpha: float = setting(0.0, "weight of the chosen answers' per-token NLL (RPO); 0: plain DPO")
    logps_reduction: str = setting("sum", "sum (DPO) | mean (MiniMind's length-normalised)")
    loss_weights: list[float] | None = setting(None, "one weight per loss_type term of a mix, e.g. 1.0,0.5 "
                                               "(default: 1 each)")
    simpo_gamma: float = setting(0.5, "SimPO's target reward margin gamma")
    discopop_tau: float = setting(0.05, "DiscoPOP's temperature tau")
    aux_loss_coef: float | None = setting(None, "weight of a MoE model's aux loss (default: the model config's)")


@dataclass
class ReferenceSettings:
    """The frozen reference and the pair forward."""

    ref_model: str | None = setting(None, "reference model (default: same as --model; with LoRA: the policy with "
                                    "its adapter off)", resume="content")
    precompute_ref: bool = setting(False, "compute the reference log-probs once before training (cached on disk)",
                                   resume="free")
    shared_prompt: bool = setting(True, "pack [prompt, chosen, rejected] into one row: the prompt is computed once")


@dataclass
class LoraSettings:
    """LoRA (minidpo.lora): train a low-rank adapter; without --ref_model the reference is the adapter off."""

    lora_r: int = setting(0, "LoRA rank (0: full fine-tuning)")
    lora_alpha: float = setting(16.0, "LoRA scale: the adapter's update is multiplied by alpha / r")
    lora_dropout: float = setting(0.0, "dropout on the adapter's input")
    lora_target_modules: list[str] = setting([], "comma-separated module names to adapt (default: every linear "
                                             "layer of the decoder blocks)")
    lora_adapter: str | None = setting(None, "start from this PEFT LoRA adapter folder: the policy trains a copy, "
                                       "the reference is base + it")


@dataclass
class ScheduleSettings:
    """The optimizer and its schedule."""

    learning_rate: float = 5e-6
    min_lr_ratio: float = setting(0.1, "cosine decays to learning_rate * min_lr_ratio")
    warmup_steps: int = setting(0, "linear warmup, in optimizer steps")
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float = setting(1.0, "gradient clipping (0 disables)")
    epochs: int = 1
    max_steps: int = setting(-1, "stop after this many optimizer steps (-1: all epochs)")


@dataclass
class BatchSettings:
    """How pairs become micro-batches (minidpo.data.plan)."""

    batch_size: int = setting(4, "pairs per micro-step per rank")
    grad_accum: int = setting(1, "micro-steps per optimizer step")
    max_tokens_per_batch: int = setting(0, "0: off (batch_size pairs per micro-step); n: fill each micro-batch with "
                                        "pairs up to n padded packed positions (pairs x longest [prompt, chosen, "
                                        "rejected] row; batch_size is then unused); a longer pair travels alone")
    group_by_length: bool = True
    seed: int = 42


@dataclass
class CheckpointSettings:
    """The run folder: logs, checkpoints, exports, resuming."""

    output_dir: str = setting("runs/dpo", "run folder: config, logs, checkpoints, export", resume="free")
    log_interval: int = setting(10, "optimizer steps between log lines", resume="free")
    save_interval: int = setting(500, "optimizer steps between checkpoints (0: only at end)", resume="free")
    keep_checkpoints: int = setting(2, "resumable checkpoints to keep", resume="free")
    resume: bool = setting(False, "continue from the latest checkpoint in output_dir", resume="free")
    resume_allow_changes: str = setting("", "comma-separated settings a --resume may change on purpose (e.g. "
                                        "epochs,max_steps; 'all'); others must match the checkpoint", resume="free")
    export: bool = setting(True, "write a Hugging Face export with every checkpoint", resume="free")


@dataclass
class DistributedSettings:
    """DeepSpeed, ranks and failures."""

    deepspeed: str = setting("ds_configs/zero2.json", "DeepSpeed JSON config", resume="free")
    dist_timeout: float = setting(1800.0, "seconds a rank waits in a collective for the others before it fails "
                                  "(a dead or hung rank)", resume="free")
    max_skipped_steps: int = setting(10, "stop after this many optimizer steps in a row were skipped for a "
                                     "non-finite loss/gradient (0: never stop)", resume="free")


# Sections whose fields may change on resume unless a field says otherwise.
FREE_SECTIONS = (CheckpointSettings, DistributedSettings)


class _Config:
    """What every run config does with its sections."""

    def __post_init__(self):
        if isinstance(self, LossSettings):
            self.loss_type = _names(self.loss_type)
            self.loss_weights = _numbers(self.loss_weights, "loss_weights")
        if isinstance(self, LoraSettings):
            modules = _names(self.lora_target_modules or [])
            self.lora_target_modules = [modules] if isinstance(modules, str) else modules

    @property
    def ref_model_path(self) -> str:
        return getattr(self, "ref_model", None) or self.model

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def sections(cls) -> list[type]:
        return [base for base in cls.__mro__ if dataclasses.is_dataclass(base) and base.__name__.endswith("Settings")]

    @classmethod
    def resume_rule(cls, name: str) -> str:
        """"same", "content" or "free": what a resumed run may do with setting `name`."""
        f = cls.__dataclass_fields__[name]
        if "resume" in f.metadata:
            return f.metadata["resume"]
        section = next(s for s in cls.sections() if name in s.__dataclass_fields__)
        return "free" if section in FREE_SECTIONS else "same"


def _names(value) -> str | list[str]:
    """"a,b" -> ["a", "b"]; a single name stays a string; a list stays a list of stripped strings."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(v).strip() for v in items if str(v).strip()]
    if isinstance(value, str) and len(items) == 1:
        return items[0]
    return items


def _numbers(value, name: str) -> list[float] | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        return [float(v) for v in items]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} {value!r}: expected numbers, e.g. 1.0,0.5") from None


@dataclass
class RunConfig(_Config, ModelSettings, DataSettings, ReferenceSettings, LossSettings, LoraSettings,
                ScheduleSettings, BatchSettings, CheckpointSettings, DistributedSettings):
    """A DPO run: every section."""


@dataclass
class SFTConfig(_Config, ModelSettings, DataSettings, ScheduleSettings, BatchSettings, CheckpointSettings,
                DistributedSettings):
    """Supervised fine-tuning on both answers of each pair (the demo's SFT model): no DPO settings."""

    model: str = setting("runs/demo-init", "untrained or pretrained HF model folder", resume="content")
    output_dir: str = setting("runs/sft", "run folder: config, logs, checkpoints, export", resume="free")
    learning_rate: float = 2e-3
    warmup_steps: int = 20
    epochs: int = 3
    batch_size: int = setting(16, "pairs per micro-step per rank (both answers are trained on)")


# --- flags and files -----------------------------------------------------------------------------------

def _parse_bool(text: str) -> bool:
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _field_type(f: dataclasses.Field):
    """The scalar parser for a dataclass field (annotations are strings under `from __future__`)."""
    t = str(f.type)
    if t.startswith("bool"):
        return _parse_bool
    if t.startswith("int"):
        return int
    if t.startswith("float"):
        return float
    return str


def build_arg_parser(config_cls=RunConfig, description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="JSON or YAML run-config file; flags given on the command line override it")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # added by `deepspeed`
    sections = config_cls.sections() if hasattr(config_cls, "sections") else [config_cls]
    seen = set()
    for section in sections:
        group = parser.add_argument_group(section.__doc__.strip().splitlines()[0].rstrip(".")) \
            if section is not config_cls else parser
        for f in dataclasses.fields(config_cls):
            if f.name in seen or f.name not in section.__dataclass_fields__:
                continue
            seen.add(f.name)
            kwargs = {"default": argparse.SUPPRESS, "help": f.metadata.get("help", " ")}
            if str(f.type).startswith("tuple"):
                kwargs.update(nargs=2, type=float, metavar=("B1", "B2"))
            else:
                kwargs["type"] = _field_type(f)
            group.add_argument(f"--{f.name}", **kwargs)
    return parser


def load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml  # only a YAML config needs it

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes one clear line
        raise ConfigError(f"--config {path}: cannot parse: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of setting -> value")
    return values


def parse_config(argv: list[str] | None = None, config_cls=RunConfig, description: str = ""):
    """Defaults < --config file < command-line flags. Unknown keys in the file are errors."""
    args = vars(build_arg_parser(config_cls, description).parse_args(argv))
    args.pop("local_rank", None)
    values = load_config_file(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        what = "DPO-only " if config_cls is not RunConfig and set(unknown) <= {f.name for f in dataclasses.fields(RunConfig)} else ""
        raise ConfigError(f"unknown {what}setting(s) in config file: {', '.join(unknown)}")
    values.update(args)
    if "adam_betas" in values:
        values["adam_betas"] = tuple(float(b) for b in values["adam_betas"])
    return config_cls(**values)


# --- cheap checks, before any model or data is loaded ----------------------------------------------------

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
    if not os.path.exists(cfg.data):
        raise ConfigError(f"--data {cfg.data}: no such file or folder")
    if not os.path.isfile(cfg.deepspeed):
        raise ConfigError(f"--deepspeed {cfg.deepspeed}: no such file (see ds_configs/)")
    choices = [("dtype", DTYPES), ("chat_template", CHAT_TEMPLATES), ("on_bad_record", BAD_RECORD_POLICIES)]
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
    check_output_dir(cfg.output_dir)


def _check_loss(cfg) -> None:
    try:
        check_loss_settings(cfg.loss_type, cfg.beta, cfg.label_smoothing, cfg.rpo_alpha, loss_weights=cfg.loss_weights,
                            simpo_gamma=cfg.simpo_gamma, discopop_tau=cfg.discopop_tau)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if not needs_reference(cfg.loss_type):  # nothing would read a reference model
        for name in ("ref_model", "precompute_ref"):
            if getattr(cfg, name):
                raise ConfigError(f"--{name} does not apply: loss_type {','.join(loss_names(cfg.loss_type))} is "
                                  "reference-free (no reference model is loaded)")


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
