"""LoRA DPO on the `peft` library: the policy trains a low-rank adapter on frozen base weights.

With no --ref_model the reference costs nothing: it is the policy engine's own forward with the trained
adapter switched off (no second copy of the weights, no reference engine). Starting from an existing
adapter (--lora_adapter), the policy trains a copy of it ("default") and the reference is base + that
adapter, loaded a second time and frozen ("reference"). With --sync_ref_model (TR-DPO) and no --ref_model,
a fresh adapter gets the same frozen twin, a copy of the policy's initial adapter (B = 0: the base itself),
which minidpo.reference.ReferenceSync overwrites with the trained adapter every ref_model_sync_steps steps.

Exports: `<export>/adapter/` (PEFT layout: adapter_config.json + adapter_model.safetensors) and
`<export>/` itself, the adapter merged into the base weights, which plain transformers loads.
An adapter folder given as a model source is merged onto its base by minidpo.sources.adapter.
"""

from __future__ import annotations

import copy
import os

import torch

from minidpo.errors import ConfigError
from minidpo.sources.adapter import check_same_base, merge_adapter, read_adapter_config

POLICY = "default"      # the trained adapter (PEFT's default name)
REFERENCE = "reference"  # --lora_adapter's frozen copy: part of the reference
ADAPTER_DIR = "adapter"  # inside every export folder


def enabled(cfg) -> bool:
    return cfg.lora_r > 0 or bool(cfg.lora_adapter)


def check_settings(cfg) -> None:
    """Checks that need no model (run with the settings' own checks, before any model is loaded)."""
    if cfg.lora_r < 0:
        raise ConfigError(f"--lora_r {cfg.lora_r}: expected 0 (LoRA off) or a rank >= 1")
    if not enabled(cfg):
        return
    if cfg.lora_alpha <= 0:
        raise ConfigError(f"--lora_alpha {cfg.lora_alpha}: must be > 0 (the adapter is scaled by alpha / r)")
    if not 0 <= cfg.lora_dropout < 1:
        raise ConfigError(f"--lora_dropout {cfg.lora_dropout}: must be in [0, 1)")
    if cfg.lora_adapter:
        read_adapter_config(cfg.lora_adapter, "--lora_adapter")
    if getattr(cfg, "sync_ref_model", False):
        if cfg.ref_model:
            raise ConfigError("--sync_ref_model with LoRA and --ref_model is not supported (the reference engine "
                              "would need the policy's merged weights): leave --ref_model unset, the reference is "
                              "then a frozen copy of the adapter")
        if cfg.ref_model_mixup_alpha != 1.0:
            raise ConfigError(f"--ref_model_mixup_alpha {cfg.ref_model_mixup_alpha}: with LoRA the reference is a "
                              "copy of the adapter, and a mix of two adapters' low-rank factors is not the mix of "
                              "their updates: use 1 (hard copy), or full fine-tuning for soft updates")


def syncs_adapter(cfg) -> bool:
    """TR-DPO with LoRA: the reference is a frozen twin adapter that the trained one is copied into."""
    return enabled(cfg) and bool(getattr(cfg, "sync_ref_model", False)) and not cfg.ref_model


def twin_name(name: str, source: str, target: str) -> str:
    """A parameter's name in adapter `target`: e.g. ...q_proj.lora_A.default.weight -> ...lora_A.reference.weight."""
    return ".".join(target if part == source else part for part in name.split("."))


def is_lora(module) -> bool:
    from peft import PeftModel  # heavy: imported only where LoRA is asked about

    return isinstance(getattr(module, "module", module), PeftModel)


def decoder_linear_names(model) -> list[str]:
    """Leaf names of every nn.Linear inside the decoder blocks (q_proj, ..., down_proj for Llama)."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None) or getattr(decoder, "h", None) or decoder
    return sorted({name.rsplit(".", 1)[-1] for name, m in layers.named_modules() if isinstance(m, torch.nn.Linear)})


def target_modules(model, wanted) -> list[str]:
    """--lora_target_modules as a list (comma-separated text or a YAML list); default: decoder linears.
    A name must be the last component (or a dotted suffix) of some module's name."""
    names = [n.strip() for n in (wanted.split(",") if isinstance(wanted, str) else wanted or []) if n.strip()]
    if not names:
        return decoder_linear_names(model)
    modules = [name for name, _ in model.named_modules() if name]
    for n in names:
        if not any(m == n or m.endswith("." + n) for m in modules):
            leaves = sorted({m.rsplit(".", 1)[-1] for m in modules})
            raise ConfigError(f"--lora_target_modules: {n!r} matches no module of the model; its module names are "
                              f"{', '.join(leaves)}")
    return names


def wrap(model, cfg, log=print):
    """The policy as a PEFT model: a fresh adapter (--lora_r, --lora_alpha, --lora_dropout,
    --lora_target_modules) or a trainable copy of --lora_adapter plus its frozen twin for the reference.
    The adapter is created in the base's dtype (float32 here; DeepSpeed then casts everything to the
    engine's dtype, so ZeRO-3 never sees mixed bf16/fp32 parameters)."""
    from peft import LoraConfig, PeftModel, get_peft_model  # heavy: imported only for a LoRA run

    if cfg.lora_adapter:
        adapter = read_adapter_config(cfg.lora_adapter, "--lora_adapter")
        check_same_base(adapter.get("base_model_name_or_path"), cfg.model, f"--lora_adapter {cfg.lora_adapter}")
        if cfg.lora_r and cfg.lora_r != adapter.get("r"):
            raise ConfigError(f"--lora_r {cfg.lora_r} contradicts --lora_adapter {cfg.lora_adapter} (r={adapter.get('r')}); "
                              "leave --lora_r at 0 to continue the adapter")
        try:
            peft = PeftModel.from_pretrained(model, cfg.lora_adapter, adapter_name=POLICY, is_trainable=True,
                                             autocast_adapter_dtype=False)
            if not cfg.ref_model:
                peft.load_adapter(cfg.lora_adapter, adapter_name=REFERENCE, is_trainable=False,
                                  autocast_adapter_dtype=False)
                peft.set_adapter(POLICY)
        except (RuntimeError, ValueError, KeyError) as e:  # shapes or module names of another model
            raise ConfigError(f"--lora_adapter {cfg.lora_adapter}: does not fit --model {cfg.model}: "
                              f"{str(e).strip().splitlines()[0]}") from e
    else:
        config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                            target_modules=target_modules(model, cfg.lora_target_modules), task_type="CAUSAL_LM")
        peft = get_peft_model(model, config, autocast_adapter_dtype=False)
        if syncs_adapter(cfg):
            _add_reference_twin(peft)
    peft.peft_config[POLICY].base_model_name_or_path = os.path.abspath(cfg.model)  # merged exports find it
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft.parameters())
    log(f"minidpo: LoRA r={peft.peft_config[POLICY].r} on {', '.join(sorted(peft.peft_config[POLICY].target_modules))}: "
        f"{trainable:,} trainable of {total:,} parameters")
    return peft


def _add_reference_twin(peft) -> None:
    """A frozen adapter REFERENCE equal to POLICY (a second PEFT adapter: the reference pass only switches
    adapters, and ZeRO-3 partitions it like any frozen parameter)."""
    config = copy.deepcopy(peft.peft_config[POLICY])
    config.inference_mode = True
    peft.add_adapter(REFERENCE, config, autocast_adapter_dtype=False)
    params = dict(peft.named_parameters())
    with torch.no_grad():
        for name, param in params.items():
            if REFERENCE in name.split("."):
                param.copy_(params[twin_name(name, REFERENCE, POLICY)])
    peft.set_adapter(POLICY)  # only the policy's adapter trains


def reference_is_policy(cfg) -> bool:
    """LoRA without an explicit --ref_model: the reference is the policy engine with its adapter off."""
    return enabled(cfg) and not cfg.ref_model


def reference_adapter(cfg) -> str | None:
    """The adapter that is part of the reference (for the reference cache key)."""
    return cfg.lora_adapter if reference_is_policy(cfg) else None


class AdapterOffReference:
    """Callable like an engine: the policy engine's forward with the trained adapter switched off
    (the base alone, or base + the frozen --lora_adapter), in eval mode (no dropout). Callers run it
    under torch.no_grad(); `.module` lets logprobs find the model behind it."""

    def __init__(self, engine):
        self.engine = engine
        self.module = engine.module

    def __call__(self, **kwargs):
        peft, was_training = self.module, self.module.training
        peft.eval()
        try:
            if REFERENCE in peft.peft_config:
                peft.set_adapter(REFERENCE, inference_mode=True)
                try:
                    return self.engine(**kwargs)
                finally:
                    peft.set_adapter(POLICY)  # trainable again: the optimizer holds these parameters
            with peft.disable_adapter():
                return self.engine(**kwargs)
        finally:
            peft.train(was_training)


def engine_dtype(engine) -> torch.dtype:
    return next(p for p in engine.module.parameters()).dtype


def export(engine, tokenizer, out_dir: str, state_dict=None) -> None:
    """Rank 0: the trained adapter in PEFT layout under out_dir/adapter, and out_dir itself as the
    merged full model (base + adapter) in the engine's dtype. state_dict: ZeRO-3's gathered weights."""
    adapter_dir = os.path.join(out_dir, ADAPTER_DIR)
    engine.module.save_pretrained(adapter_dir, state_dict=state_dict, selected_adapters=[POLICY],
                                  save_embedding_layers=False, safe_serialization=True)
    tokenizer.save_pretrained(adapter_dir)
    base = engine.module.peft_config[POLICY].base_model_name_or_path
    merge_adapter(adapter_dir, base, out_dir, dtype=engine_dtype(engine))
    tokenizer.save_pretrained(out_dir)
