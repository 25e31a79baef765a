"""Supervised fine-tuning on BOTH answers of each preference pair, through the same DeepSpeed engine.

This makes the demo's SFT model: like a real SFT model that preference data was sampled from, it
learns to produce good and bad answers alike, which DPO then separates. Same data pipeline, engine
and export as DPO; the objective is the mean negative log-likelihood of the response tokens.

    python -m minidpo.sft --model runs/demo-init --data data/demo/train.jsonl --output_dir runs/sft
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from minidpo import checkpoint
from minidpo.config import RunConfig
from minidpo.engine import build_policy_engine, load_causal_lm, warmup_cosine
from minidpo.logprobs import sequence_logprobs
from minidpo.train import prepare_run, run_cli, write_summary


@dataclass
class SFTConfig(RunConfig):
    """The DPO run config with SFT defaults; the preference-loss settings are unused."""

    model: str = field(default="runs/demo-init", metadata={"help": "untrained or pretrained HF model folder"})
    output_dir: str = "runs/sft"
    learning_rate: float = 2e-3
    warmup_steps: int = 20
    epochs: int = 3
    batch_size: int = 16


def train_sft(cfg: SFTConfig) -> dict:
    run = prepare_run(cfg)
    engine = build_policy_engine(load_causal_lm(cfg.model, trainable=True), run.ds_config,
                                 warmup_cosine(run.total_steps, cfg.warmup_steps, cfg.min_lr_ratio))
    run.log(f"sft: {len(run.dataset)} pairs (both answers), {run.total_steps} optimizer steps, {cfg.dtype}")
    started, step, window = time.perf_counter(), 0, []
    for micro, _, batch in run.micro_batches(0):
        out = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        logps, n_tokens = sequence_logprobs(out.logits, batch["input_ids"], batch["loss_mask"])
        loss = -logps.sum() / n_tokens.sum()  # mean NLL per response token
        engine.backward(loss)
        engine.step()
        window.append(loss.item())
        if (micro + 1) % cfg.grad_accum:
            continue
        step += 1
        if step % cfg.log_interval == 0 or step == run.total_steps:
            elapsed = time.perf_counter() - started
            run.log(f"sft step {step}/{run.total_steps}  loss {sum(window) / len(window):.4f}  "
                    f"lr {engine.get_lr()[0]:.2e}  {elapsed:.0f}s  eta {elapsed / step * (run.total_steps - step):.0f}s")
            window.clear()
        if step == run.total_steps:
            break
    checkpoint.export_hf(engine, run.tokenizer, os.path.join(cfg.output_dir, "export"))
    return write_summary(run, step, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    run_cli(train_sft, SFTConfig, "SFT on both answers of preference pairs (makes the demo's SFT model)", argv)


if __name__ == "__main__":
    main()
