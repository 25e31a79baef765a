"""The run config's sections: one dataclass per concern, every field with its help and resume rule."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from minidpo.config.health import HealthSettings
from minidpo.errors import ConfigError

DTYPES = ("bf16", "fp16", "fp32")
CHAT_TEMPLATES = ("auto", "none")
LOGPS_REDUCTIONS = ("sum", "mean")
BAD_RECORD_POLICIES = ("error", "skip")
REASONING_MODES = ("as_given", "strip", "if_both")


def setting(default, help: str = " ", *, resume: str | None = None):  # noqa: A002 - argparse's word
    metadata = {"help": help} if resume is None else {"help": help, "resume": resume}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


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

    data: str = setting("data/demo/train.jsonl", "preference data: JSON/JSONL/Parquet/Arrow file or folder, or "
                        "several, comma-separated",
                        resume="content")
    data_format: str = setting("auto", "auto, or force a format (docs/data.md)")
    on_bad_record: str = setting("error", "error | skip", resume="free")
    chat_template: str = setting("auto", "auto: the tokenizer's chat template (prompts already templated are used "
                                 "as they are); none: raw prompt + answer + EOS (TRL's string data)")
    max_length: int = 512
    max_prompt_length: int = 256
    enable_thinking: bool | None = setting(None, "passed to the chat template (Qwen3, MiniMind-3: false closes the think "
                                           "block in the generation prompt); unset: the template's default")
    answer_reasoning: str = setting("as_given", "the answers' reasoning (reasoning_content or <think>...</think>): "
                                    "as_given | strip (from both answers) | if_both (kept only where both have it)")
    tools: str | None = setting(None, "a JSON file of tool schemas for the records without their own \"tools\"")


@dataclass
class LossSettings:
    """The preference objective (minidpo.losses, docs/losses.md)."""

    beta: float = 0.1
    loss_type: str | list[str] = setting("sigmoid", "sigmoid (DPO) | hinge | ipo | robust | exo_pair | nca_pair | "
                                         "sppo_hard | apo_zero | apo_down | discopop | bco_pair | sigmoid_norm | aot | "
                                         "aot_unpaired | simpo | cpo | orpo | kto (unpaired data) | listwise_pairs | "
                                         "plackett_luce (ranked lists), or a mix: sigmoid,sft; sigmoid,kto trains "
                                         "pairs and unpaired examples together (docs/losses.md)")
    label_smoothing: float = setting(0.0, "label-noise rate of sigmoid (cDPO), robust, exo_pair, aot, aot_unpaired")
    rpo_alpha: float = setting(0.0, "weight of the chosen answers' per-token NLL (RPO); 0: plain DPO")
    logps_reduction: str = setting("sum", "sum (DPO) | mean (MiniMind's length-normalised)")
    loss_weights: list[float] | None = setting(None, "one weight per loss_type term of a mix, e.g. 1.0,0.5 "
                                               "(default: 1 each)")
    simpo_gamma: float = setting(0.5, "SimPO's target reward margin gamma")
    discopop_tau: float = setting(0.05, "DiscoPOP's temperature tau")
    f_divergence_type: str = setting("reverse_kl", "f-DPO's divergence for sigmoid / sigmoid_norm: reverse_kl (DPO) | "
                                     "forward_kl | js_divergence | alpha_divergence (docs/losses.md)")
    f_alpha_divergence_coef: float = setting(0.5, "alpha of alpha_divergence, in (0, 1): 0 is reverse KL, 1 forward KL")
    ld_alpha: float | None = setting(None, "LD-DPO: weight in [0, 1] of the longer answer's log-probs past the shorter "
                                     "one's length (policy side; 1: DPO; unset: off)")
    use_weighting: bool = setting(False, "WPO: weight each pair by the policy's length-normalised probability of its "
                                  "two answers (docs/losses.md)")
    desirable_weight: float = setting(1.0, "KTO: weight of the desirable examples' losses")
    undesirable_weight: float = setting(1.0, "KTO: weight of the undesirable examples' losses")
    kto_kl: str = setting("batch", "KTO's KL reference point: batch (estimated from mismatched pairs) or a number")
    aux_loss_coef: float | None = setting(None, "weight of a MoE model's aux loss (default: the model config's)")


@dataclass
class ReferenceSettings:
    """The frozen reference and the pair forward."""

    ref_model: str | None = setting(None, "reference model (default: same as --model; with LoRA: the policy with "
                                    "its adapter off)", resume="content")
    precompute_ref: bool = setting(False, "compute the reference log-probs once before training (cached on disk)",
                                   resume="free")
    shared_prompt: bool = setting(True, "pack [prompt, chosen, rejected] into one row: the prompt is computed once")
    sync_ref_model: bool = setting(False, "TR-DPO: update the reference from the policy every ref_model_sync_steps "
                                   "optimizer steps (docs/losses.md)")
    ref_model_mixup_alpha: float = setting(0.6, "TR-DPO: ref <- alpha * policy + (1 - alpha) * ref at each sync "
                                           "(1: hard copy)")
    ref_model_sync_steps: int = setting(512, "TR-DPO: optimizer steps between reference updates")


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
                ScheduleSettings, BatchSettings, CheckpointSettings, DistributedSettings, HealthSettings):
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


