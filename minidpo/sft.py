"""Supervised fine-tuning on BOTH answers of each preference pair, through the same DeepSpeed engine.

This makes the demo's SFT model: like a real SFT model that preference data was sampled from, it
learns to produce good and bad answers alike, which DPO then separates. Same data pipeline, engine,
checkpoints (resumable with --resume true), Ctrl-C handling and export as DPO; the objective is the mean
negative log-likelihood of the response tokens.

    python -m minidpo.sft --model runs/demo-init --data data/demo/train.jsonl --output_dir runs/sft
"""

from __future__ import annotations

import os
import time

from minidpo import checkpoint
from minidpo.config import SFTConfig
from minidpo.engine import build_policy_engine
from minidpo.fault_injection import inject
from minidpo.logprobs import sequence_logprobs
from minidpo.models import load_causal_lm
from minidpo.run import main_for, prepare_run, start_or_resume, write_summary
from minidpo.schedule import warmup_cosine
from minidpo.signals import StopRequest, resume_hint


def train_sft(cfg: SFTConfig) -> dict:
    with StopRequest() as stop:  # SIGTERM / Ctrl-C: finish the step, save, exit 0
        return _train_sft(cfg, stop)


def _train_sft(cfg: SFTConfig, stop: StopRequest) -> dict:
    run = prepare_run(cfg)
    fingerprint, resuming = start_or_resume(run, run.log)
    engine = build_policy_engine(load_causal_lm(cfg.model, trainable=True, allow_pickle=cfg.allow_pickle_weights,
                                                activation_checkpointing=cfg.activation_checkpointing),
                                 run.ds_config, warmup_cosine(run.total_steps, cfg.warmup_steps, cfg.min_lr_ratio))
    step = checkpoint.resume(engine, cfg.output_dir)["step"] if resuming else 0
    run.log(f"sft: {len(run.dataset)} pairs (both answers), {run.total_steps} optimizer steps, {cfg.dtype}"
            + (f", resumed at step {step}" if step else ""))

    def save(step: int, export: bool) -> str:
        return checkpoint.save(engine, run.tokenizer, cfg.output_dir, step, {"step": step}, keep=cfg.keep_checkpoints,
                               export=export, meta={"fingerprint": fingerprint})
    started, window, first = time.perf_counter(), [], step
    for micro, _, batch in run.micro_batches(step):
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
                    f"lr {engine.get_lr()[0]:.2e}  {elapsed:.0f}s  "
                    f"eta {elapsed / (step - first) * (run.total_steps - step):.0f}s")
            window.clear()
        inject("step", step)
        if step == run.total_steps:
            break
        stopping = stop.agreed()  # collective: every rank stops at the same step
        if stopping or (cfg.save_interval and step % cfg.save_interval == 0):
            saved = save(step, cfg.export)
        if stopping:
            run.log(f"sft: stopped at step {step}/{run.total_steps} ({stop.signal_name}); checkpoint {saved}")
            run.log(resume_hint(cfg.output_dir))
            return {"steps": step, "stopped": stop.signal_name, "checkpoint": saved}
    seconds = time.perf_counter() - started
    save(step, False)
    checkpoint.export_hf(engine, run.tokenizer, os.path.join(cfg.output_dir, "export"))
    return write_summary(run, step, seconds)


def main(argv: list[str] | None = None) -> None:
    main_for(train_sft, SFTConfig, "SFT on both answers of preference pairs (makes the demo's SFT model)", argv)


if __name__ == "__main__":
    main()
