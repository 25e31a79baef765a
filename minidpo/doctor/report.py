"""`minidpo doctor`: the checks in order, each printed as it finishes, and the exit code."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import replace

import torch

from minidpo import lora
from minidpo.config import validate
from minidpo.data import collate_packed, collate_pairs
from minidpo.data.inspect import inspect_report
from minidpo.distributed import setup_distributed
from minidpo.doctor.forward import check_forwards, longest_pairs
from minidpo.doctor.memory import activation_bytes, advice, estimate, size, zero_stage
from minidpo.ds_config import resolve_ds_config
from minidpo.engine import on_cpu
from minidpo.health import data_red_flags, expected_first_loss
from minidpo.logprobs import packed_forward_unsupported, pair_logps
from minidpo.losses import needs_reference
from minidpo.models import load_causal_lm, load_tokenizer
from minidpo.run import load_data
from minidpo.sources import hf_folder
from minidpo.train import pair_tokens, train


class Doctor:
    """Collects the checks' results; `failed` names the failed ones for the exit line."""

    def __init__(self, out=print):
        self.out, self.failed = out, []

    def section(self, title: str) -> None:
        self.out(f"\n== {title}")

    def result(self, passed: bool, line: str, name: str = "") -> None:
        self.out(f"  {'ok  ' if passed else 'FAIL'} {line}")
        if not passed:
            self.failed.append(name or line.split(":")[0])

    def note(self, line: str) -> None:
        self.out(f"  note {line}")


def diagnose(cfg, nproc: int = 1, timing_steps: int = 3, out=print) -> int:
    """Run every check on `cfg`'s model and data as `nproc` ranks would train them; 0 when all pass."""
    doc = Doctor(out)
    work = tempfile.mkdtemp(prefix="minidpo-doctor-")
    try:
        return _diagnose(doc, replace(cfg, output_dir=work), nproc, timing_steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _diagnose(doc: Doctor, cfg, nproc: int, timing_steps: int) -> int:
    validate(cfg)
    cfg.model = hf_folder(cfg.model, tokenizer=cfg.tokenizer, role="--model")
    tokenizer = load_tokenizer(cfg.model)
    doc.section(f"data: {cfg.data} (as `minidpo data inspect` shows it)")
    report, n = inspect_report(cfg.data, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                               data_format=cfg.data_format, chat_template=cfg.chat_template,
                               enable_thinking=cfg.enable_thinking, answer_reasoning=cfg.answer_reasoning,
                               tools=cfg.tools)
    doc.out("\n".join("  " + line for line in report.splitlines()))
    if not n:
        doc.result(False, "data: no usable preference pair", "data")
        return _verdict(doc)
    setup_distributed(cfg.dist_timeout)  # a world of one: the probe run's, and load_data's barrier
    dataset = load_data(cfg, tokenizer, 0, lambda *a: None)  # exactly as training loads it
    flags = data_red_flags(dataset, tokenizer, cfg)
    doc.result(True, f"data: {len(dataset)} pairs, {len(flags)} red flag(s)")
    for flag in flags:
        doc.note(f"data red flag: {flag}")

    doc.section(f"one batch on {cfg.model}")
    model = load_causal_lm(cfg.model, trainable=False, allow_pickle=cfg.allow_pickle_weights).eval()
    packed = cfg.shared_prompt and not packed_forward_unsupported(model)
    for passed, line in check_forwards(model, longest_pairs(dataset, cfg, packed)[:4], tokenizer.pad_token_id,
                                       cfg.logps_reduction, cfg.shared_prompt):
        doc.result(passed, line)

    doc.section(f"memory per rank, {nproc} rank(s)")
    fits = _memory(doc, cfg, model, tokenizer, dataset, packed, nproc)
    del model
    doc.section(f"{1 + timing_steps} optimizer steps of the real training loop (one process)")
    if not fits:
        doc.note("skipped: the run would not fit in memory (see above)")
        return _verdict(doc)
    _timed_run(doc, cfg, dataset, nproc, timing_steps)
    return _verdict(doc)


def _memory(doc: Doctor, cfg, model, tokenizer, dataset, packed: bool, nproc: int) -> bool:
    ds_config = resolve_ds_config(cfg.deepspeed, cfg, nproc, on_cpu())
    stage = zero_stage(ds_config)
    doc.out(f"  (ZeRO-{stage}, {cfg.dtype}, " + (f"LoRA r={cfg.lora_r}" if lora.enabled(cfg) else "full fine-tuning")
            + (f", activation checkpointing every {cfg.activation_checkpointing} layer(s)"
               if cfg.activation_checkpointing else "") + ")")
    reference_params = 0
    if needs_reference(cfg.loss_type) and not cfg.precompute_ref and not lora.reference_is_policy(cfg):
        reference_params = (sum(p.numel() for p in model.parameters()) if not cfg.ref_model else
                            sum(p.numel() for p in load_causal_lm(cfg.ref_model_path, trainable=False).parameters()))
    probe = load_causal_lm(cfg.model, trainable=True, activation_checkpointing=cfg.activation_checkpointing,
                           allow_pickle=cfg.allow_pickle_weights)
    if lora.enabled(cfg):
        probe = lora.wrap(probe, cfg, lambda *a: None)
    probe.to({"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.dtype, torch.float32))
    if cfg.dtype == "fp16" and on_cpu():
        probe.float()  # no fp16 kernels on a CPU: measure in fp32 and halve
    pairs = longest_pairs(dataset, cfg, packed)
    batch = (collate_packed if packed else collate_pairs)(pairs, tokenizer.pad_token_id)
    measured = activation_bytes(probe, batch, lambda m, b: pair_logps(m, b, cfg.logps_reduction))
    if cfg.dtype == "fp16" and on_cpu():
        measured /= 2
    mem = estimate(cfg, probe, ds_config, nproc, measured, reference_params)
    del probe
    doc.out("\n".join(mem.lines()))
    fits = mem.total <= 0.9 * mem.available
    doc.result(fits, f"memory: {size(mem.total)} per rank"
               + (" fits" if fits else f" does not fit in 90% of {size(mem.available)}; change: "
                  + advice(cfg, stage)), "memory")
    return fits


def _timed_run(doc: Doctor, cfg, dataset, nproc: int, timing_steps: int) -> None:
    """The real training loop for a few steps in a scratch folder: the first loss as trained, and the
    speed that predicts the run's duration from the data's token count."""
    probe = replace(cfg, max_steps=1 + timing_steps, log_interval=1, save_interval=0, export=False, health=True,
                    resume=False, report_to="none")
    summary = train(probe)
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    expected = expected_first_loss(cfg)
    mismatch = [w["message"] for w in summary.get("health", []) if w["check"] == "reference_mismatch"]
    doc.result(not mismatch, f"first loss {rows[0]['loss']:.4f}"
               + (f", {expected:.4f} expected at policy == reference" if expected is not None else
                  ", model-dependent (an SFT / RPO term): the log-ratios to the reference were checked"
                  if needs_reference(cfg.loss_type) else " (a reference-free loss: nothing to compare with)")
               + (f": {mismatch[0]}" if mismatch else ""), "first loss")
    for w in summary.get("health", []):
        if w["check"] not in ("reference_mismatch", "data"):
            doc.note(f"health warning in these steps: {w['message']}")
    speeds = [r["perf/tokens_per_s"] for r in rows[1:] if "perf/tokens_per_s" in r] or [rows[0]["perf/tokens_per_s"]]
    speed = sum(speeds) / len(speeds)
    tokens, steps = _run_size(cfg, dataset, nproc)
    seconds = tokens / (speed * nproc)
    doc.result(True, f"speed: {speed:,.0f} tokens/s on this process; the run: {steps} optimizer steps, "
               f"{tokens / 1e6:.2f}M tokens, about {_duration(seconds)} on {nproc} rank(s) like this one "
               "(ranks assumed to scale linearly" + ("; plus one reference pass over the data)" if cfg.precompute_ref
                                                     else ")"))


def _run_size(cfg, dataset, nproc: int) -> tuple[float, str]:
    """(tokens the run trains on, its optimizer steps as text), from the data's lengths and the settings."""
    per_epoch = float(pair_tokens(dataset))
    if cfg.max_tokens_per_batch:  # the steps depend on the packing: count tokens of whole epochs
        return per_epoch * cfg.epochs, f"{cfg.epochs} epoch(s) of token-budget"
    steps_per_epoch = max(1, len(dataset) // (cfg.batch_size * cfg.grad_accum * nproc))
    steps = steps_per_epoch * cfg.epochs if cfg.max_steps < 0 else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    return per_epoch * steps / steps_per_epoch, str(steps)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _verdict(doc: Doctor) -> int:
    if doc.failed:
        doc.out(f"\ndoctor: {len(doc.failed)} check(s) failed: {', '.join(doc.failed)}")
        return 1
    doc.out("\ndoctor: every check passed")
    return 0
