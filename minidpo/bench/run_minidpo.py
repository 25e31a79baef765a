"""minidpo in the bench: the real `minidpo.train.train` on a single-process DeepSpeed engine, with the
reference log-probs precomputed (their pass is part of the measured time and never read from a cache).
With LoRA (minidpo-lora) that pass is the policy engine with its adapter off: no reference engine. The
listwise rows (settings.LISTWISE) score the reference per batch instead."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

from minidpo.bench.settings import Settings
from minidpo.losses import needs_reference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(paths: dict, s: Settings, out_dir: str, order=None, zero_stage: int = 0, activation_checkpointing: int = 0,
        over: dict | None = None, lora_r: int = 0, token_budget: bool = False) -> dict:
    """`over`: RunConfig settings that replace the bench's (settings.SIMPO with loss_type simpo, a listwise
    row's data and loss: settings.listwise_settings); precompute_ref follows the loss unless `over` sets it;
    `lora_r` > 0: a LoRA adapter of that rank (alpha 2 r), the reference its adapter switched off;
    `token_budget`: micro-batches filled up to `s.token_budget` packed positions instead of `batch_size` pairs."""
    import minidpo.reference
    from minidpo.config import RunConfig
    from minidpo.train import train

    if order is not None:
        raise ValueError("minidpo takes no forced order: the bench's common order is minidpo's own plan")
    minidpo.reference.CACHE_DIR = tempfile.mkdtemp(prefix="ref_logps_", dir=out_dir)  # pay the pass every run
    cfg = RunConfig(
        model=paths["model"], data=paths["data"], output_dir=out_dir,
        deepspeed=os.path.join(ROOT, "ds_configs", f"zero{zero_stage}.json"),  # one process: nothing to partition
        beta=s.beta, loss_type="sigmoid", learning_rate=s.learning_rate, warmup_steps=0, min_lr_ratio=1.0,
        weight_decay=0.0, batch_size=s.batch_size, max_grad_norm=s.max_grad_norm, dtype=s.dtype,
        precompute_ref=True, shared_prompt=True, max_length=s.max_length, max_prompt_length=s.max_prompt_length,
        seed=s.seed, max_steps=s.max_steps, log_interval=1, save_interval=0, export=False,
        activation_checkpointing=activation_checkpointing, lora_r=lora_r, lora_alpha=2.0 * lora_r,
        max_tokens_per_batch=s.token_budget if token_budget else 0)
    if over:
        cfg = dataclasses.replace(cfg, **{"precompute_ref": needs_reference(over.get("loss_type", cfg.loss_type)),
                                          **over})
    summary = train(cfg)
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        losses = [json.loads(line)["loss"] for line in f]
    trained = summary["trained"]
    return {"seconds": summary["seconds"], "pairs": trained["pairs"], "steps": summary["steps"], "losses": losses,
            "positions": trained["positions"], "real_positions": trained["real_positions"]}
