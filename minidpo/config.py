"""Run configuration: plain values, settable from a JSON/YAML file and from CLI flags (flags win).

The DeepSpeed JSON holds what DeepSpeed owns (ZeRO stage, offload, precision flags, bucket sizes);
its "auto" fields are filled from this run config, and an explicit value that disagrees with the run
config is an error, so the two can never silently diverge.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from minidpo.logprobs import REDUCTIONS
from minidpo.losses import check_loss_settings, loss_names, needs_reference

DTYPES = ("bf16", "fp16", "fp32")
CHAT_TEMPLATES = ("auto", "none")


class ConfigError(ValueError):
    """A setting is wrong; the message names it and says what to do."""


@dataclass
class RunConfig:
    # what to train, on what
    model: str = field(default="runs/sft/export", metadata={"help": "policy: a local Hugging Face causal-LM folder, a .gguf file or a MiniMind .pth (with --tokenizer)"})
    ref_model: str | None = field(default=None, metadata={"help": "reference model folder (default: same as --model)"})
    data: str = field(default="data/demo/train.jsonl", metadata={"help": "preference data: JSON/JSONL file or folder"})
    data_format: str = field(default="auto", metadata={"help": "auto, or force a format (see docs)"})
    on_bad_record: str = field(default="error", metadata={"help": "error | skip"})
    output_dir: str = field(default="runs/dpo", metadata={"help": "run folder: config, logs, checkpoints, export"})
    deepspeed: str = field(default="ds_configs/zero2.json", metadata={"help": "DeepSpeed JSON config"})
    # the algorithm
    beta: float = 0.1
    loss_type: str | list[str] = field(default="sigmoid", metadata={
        "help": "sigmoid (DPO) | hinge | ipo | robust | exo_pair | nca_pair | sppo_hard | apo_zero | apo_down | "
                "discopop | simpo | cpo | orpo, or a mix: sigmoid,sft (docs/losses.md)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "label-noise rate of sigmoid (cDPO), robust, exo_pair"})
    rpo_alpha: float = field(default=0.0, metadata={"help": "weight of the chosen answers' per-token NLL (RPO); 0: plain DPO"})
    logps_reduction: str = field(default="sum", metadata={"help": "sum (DPO) | mean (MiniMind's length-normalised)"})
    # optimisation
    learning_rate: float = 5e-6
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine decays to learning_rate * min_lr_ratio"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warmup, in optimizer steps"})
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    epochs: int = 1
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1: all epochs)"})
    batch_size: int = field(default=4, metadata={"help": "pairs per micro-step per rank"})
    grad_accum: int = field(default=1, metadata={"help": "micro-steps per optimizer step"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 disables)"})
    dtype: str = field(default="bf16", metadata={"help": "bf16 | fp16 (GPU only) | fp32"})
    aux_loss_coef: float | None = field(
        default=None, metadata={"help": "weight of a MoE model's aux loss (default: the model config's)"}
    )
    precompute_ref: bool = field(
        default=False, metadata={"help": "compute the reference log-probs once before training (cached on disk)"}
    )
    shared_prompt: bool = field(
        default=True, metadata={"help": "pack [prompt, chosen, rejected] into one row: the prompt is computed once"}
    )
    activation_checkpointing: int = field(
        default=0, metadata={"help": "0: off; n: recompute every n-th layer's activations in the backward "
                             "(1: all layers, ~1/3 more compute, much less memory)"}
    )
    # data shape
    max_length: int = 512
    max_prompt_length: int = 256
    group_by_length: bool = True
    # bookkeeping
    seed: int = 42
    log_interval: int = field(default=10, metadata={"help": "optimizer steps between log lines"})
    save_interval: int = field(default=500, metadata={"help": "optimizer steps between checkpoints (0: only at end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "resumable checkpoints to keep"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in output_dir"})
    export: bool = field(default=True, metadata={"help": "write a Hugging Face export with every checkpoint"})
    # the preference-loss family (minidpo.losses, docs/losses.md)
    loss_weights: str | list[float] | None = field(
        default=None, metadata={"help": "one weight per loss_type term of a mix, e.g. 1.0,0.5 (default: 1 each)"}
    )
    simpo_gamma: float = field(default=0.5, metadata={"help": "SimPO's target reward margin gamma"})
    discopop_tau: float = field(default=0.05, metadata={"help": "DiscoPOP's temperature tau"})

    # model sources (MiniMind .pth): the tokenizer folder a bare state dict lacks
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer folder for a --model / --ref_model that carries none "
                                "(a MiniMind .pth: its checkout's model/ folder)"}
    )
    # data rendering
    chat_template: str = field(
        default="auto", metadata={"help": "auto: the tokenizer's chat template (prompts already templated are "
                                  "used as they are); none: raw prompt + answer + EOS (TRL's string data)"}
    )
    # token-budget batches (minidpo.data.sampler.budget_steps)
    max_tokens_per_batch: int = field(
        default=0, metadata={"help": "0: off (batch_size pairs per micro-step); n: fill each micro-batch with pairs "
                             "up to n padded packed positions (pairs x longest [prompt, chosen, rejected] row; "
                             "batch_size is then unused); a longer pair travels alone"}
    )
    # reliability (minidpo.faults)
    max_skipped_steps: int = field(default=10, metadata={"help": "stop after this many optimizer steps in a row were "
                                   "skipped for a non-finite loss/gradient (0: never stop)"})
    dist_timeout: float = field(default=1800.0, metadata={"help": "seconds a rank waits in a collective for the others "
                                "before it fails (a dead or hung rank)"})
    resume_allow_changes: str = field(default="", metadata={"help": "comma-separated settings a --resume may change "
                                      "on purpose (e.g. epochs,max_steps; 'all'); others must match the checkpoint"})
    allow_pickle_weights: bool = field(default=False, metadata={"help": "accept a model folder whose weights are only a "
                                       "pickle pytorch_model.bin (read with weights_only=True)"})
    # LoRA (minidpo.lora): train a low-rank adapter; without --ref_model the reference is the adapter switched off
    lora_r: int = field(default=0, metadata={"help": "LoRA rank (0: full fine-tuning)"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scale: the adapter's update is multiplied by alpha / r"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})
    lora_target_modules: str = field(
        default="", metadata={"help": "comma-separated module names to adapt (default: every linear layer of the decoder blocks)"}
    )
    lora_adapter: str | None = field(
        default=None, metadata={"help": "start from this PEFT LoRA adapter folder: the policy trains a copy, the reference is base + it"}
    )

    @property
    def ref_model_path(self) -> str:
        return self.ref_model or self.model

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
    for f in dataclasses.fields(config_cls):
        kwargs = {"default": argparse.SUPPRESS, "help": f.metadata.get("help", " ")}
        if str(f.type).startswith("tuple"):
            kwargs.update(nargs=2, type=float, metavar=("B1", "B2"))
        else:
            kwargs["type"] = _field_type(f)
        parser.add_argument(f"--{f.name}", **kwargs)
    return parser


def load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

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
        raise ConfigError(f"unknown setting(s) in config file: {', '.join(unknown)}")
    values.update(args)
    if "adam_betas" in values:
        values["adam_betas"] = tuple(float(b) for b in values["adam_betas"])
    return config_cls(**values)


def validate(cfg: RunConfig) -> None:
    """Cheap checks that must fail before any model or data is loaded."""
    for name in ("model", "ref_model"):
        path = getattr(cfg, name)
        if path is None:
            continue
        if path.endswith(".gguf"):  # converted to a Hugging Face folder once, by minidpo.gguf
            if not os.path.isfile(path):
                raise ConfigError(f"--{name} {path}: no such GGUF file")
            continue
        if path.endswith((".pth", ".pt")):  # a MiniMind state dict, converted once by minidpo.minimind
            if not os.path.isfile(path):
                raise ConfigError(f"--{name} {path}: no such MiniMind checkpoint file")
            if not cfg.tokenizer:
                raise ConfigError(f"--{name} {path}: a MiniMind .pth holds no tokenizer: pass --tokenizer with "
                                  "MiniMind's tokenizer folder (make ... TOKENIZER=../minimind/model)")
            continue
        if not os.path.isdir(path):
            hint = " (run `make sft` to build the demo SFT model)" if path == RunConfig.model else ""
            raise ConfigError(f"--{name} {path}: not a folder{hint}")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(f"--{name} {path}: no config.json, not a Hugging Face model folder")
    if not os.path.exists(cfg.data):
        raise ConfigError(f"--data {cfg.data}: no such file or folder")
    if not os.path.isfile(cfg.deepspeed):
        raise ConfigError(f"--deepspeed {cfg.deepspeed}: no such file (see ds_configs/)")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"--dtype {cfg.dtype}: choose one of {', '.join(DTYPES)}")
    if cfg.logps_reduction not in REDUCTIONS:
        raise ConfigError(f"--logps_reduction {cfg.logps_reduction}: choose one of {', '.join(REDUCTIONS)}")
    if cfg.tokenizer is not None and not os.path.isdir(cfg.tokenizer):
        raise ConfigError(f"--tokenizer {cfg.tokenizer}: not a folder")
    if cfg.chat_template not in CHAT_TEMPLATES:
        raise ConfigError(f"--chat_template {cfg.chat_template}: choose one of {', '.join(CHAT_TEMPLATES)}")
    if cfg.on_bad_record not in ("error", "skip"):
        raise ConfigError(f"--on_bad_record {cfg.on_bad_record}: choose error or skip")
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
    for name in ("batch_size", "grad_accum", "epochs", "max_length", "log_interval", "keep_checkpoints"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    if not 0 < cfg.max_prompt_length < cfg.max_length:
        raise ConfigError(f"--max_prompt_length must be in (0, max_length={cfg.max_length}), got {cfg.max_prompt_length}")
    if cfg.learning_rate <= 0 or not 0 <= cfg.min_lr_ratio <= 1:
        raise ConfigError("--learning_rate must be > 0 and --min_lr_ratio in [0, 1]")
    check_token_budget(cfg.max_tokens_per_batch)
    if cfg.max_skipped_steps < 0 or cfg.dist_timeout <= 0:
        raise ConfigError("--max_skipped_steps must be >= 0 and --dist_timeout > 0 (seconds)")
    check_output_dir(cfg.output_dir)
    from minidpo.lora import check_settings as check_lora_settings

    check_lora_settings(cfg)


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


# --- DeepSpeed JSON -------------------------------------------------------------------------------

AUTO = "auto"


def _fill(section: dict, key: str, value, where: str, flag: str) -> None:
    """Fill an "auto" (or missing) field; an explicit value must agree with the run config."""
    current = section.get(key, AUTO)
    if current == AUTO:
        section[key] = value
    elif current != value:
        raise ConfigError(f"{where}: {key}={current!r} contradicts the run config's {flag}={value!r}; set it to \"auto\"")


def resolve_ds_config(path: str, cfg: RunConfig, world_size: int, on_cpu: bool) -> dict:
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
    try:
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
