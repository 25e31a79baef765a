"""What every training run (DPO in minidpo.train, SFT in minidpo.sft) sets up the same way: checked
settings, the process group, model sources, the DeepSpeed config, tokenizer and data, the step plan,
resuming, and the files of a run folder (run_config.json, summary.json).
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from minidpo import checkpoint, lora
from minidpo.config import LoraSettings, parse_config, validate
from minidpo.data import Batching, collate_packed, collate_pairs, load_preference_data
from minidpo.data.collate import collate_listwise, kto_pairs, padded_length
from minidpo.distributed import peer_failure_message, setup_distributed, teardown
from minidpo.ds_config import resolve_ds_config
from minidpo.engine import device, on_cpu
from minidpo.errors import ConfigError, run_cli, set_offline_environment
from minidpo.fsutil import write_text_atomic
from minidpo.losses import LISTWISE_LOSSES, loss_names
from minidpo.models import load_tokenizer
from minidpo.sources import hf_folder


def check_settings(cfg) -> None:
    """Every check that needs no model: the config's sections, then LoRA's (an adapter folder's config)."""
    validate(cfg)
    if isinstance(cfg, LoraSettings):
        lora.check_settings(cfg)


def load_data(cfg, tokenizer, rank: int, log):
    """Rank 0 prepares (and caches) the data first, so the other ranks read the cache instead of redoing it."""
    def load():
        return load_preference_data(
            cfg.data, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
            data_format=cfg.data_format, on_bad_record=cfg.on_bad_record, log=log,
            chat_template=cfg.chat_template, enable_thinking=cfg.enable_thinking,
            answer_reasoning=cfg.answer_reasoning, tools=cfg.tools,
        )
    dataset = load() if rank == 0 else None
    dist.barrier()
    return dataset if rank == 0 else load()


def resolve_model_sources(cfg, rank: int) -> None:
    """Point --model / --ref_model at Hugging Face folders: a file that is not one (GGUF, ...) is
    converted once into a cached folder (minidpo.sources), rank 0 first so the others find the cache."""
    for turn in (0, 1):
        if (rank == 0) == (turn == 0):
            cfg.model = hf_folder(cfg.model, tokenizer=cfg.tokenizer, role="--model")
            if getattr(cfg, "ref_model", None):
                cfg.ref_model = hf_folder(cfg.ref_model, tokenizer=cfg.tokenizer, role="--ref_model")
        dist.barrier()


@dataclass
class Run:
    """A prepared run: its settings, ranks, DeepSpeed config, tokenizer, data and step plan."""

    cfg: object  # RunConfig or SFTConfig
    rank: int
    world_size: int
    ds_config: dict
    tokenizer: object
    dataset: object
    steps_per_epoch: int
    total_steps: int
    log: Callable
    packed: bool = False  # [prompt, chosen, rejected] rows (the shared-prompt forward) or two rows a pair
    _step_pairs: dict = field(default_factory=dict)  # token budget: {epoch: pairs of each step, all ranks}
    _lengths: dict = field(default_factory=dict)  # {packed: [padded length of each pair]}

    @property
    def batching(self) -> Batching:
        c = self.cfg
        return Batching(c.batch_size, c.grad_accum, c.max_tokens_per_batch, c.seed, c.epochs, c.group_by_length,
                        self.unit)

    def lengths(self, packed: bool) -> list[int]:
        if packed not in self._lengths:
            self._lengths[packed] = [padded_length(p, packed) for p in self.dataset]
        return self._lengths[packed]

    def epoch_plan(self, epoch: int, rank: int | None = None) -> list[list[int]]:
        """A rank's micro-batches (pair indices) of one epoch: length-grouped by what a batch pads
        (packed rows are prompt + both answers long, plain rows prompt + the longer answer)."""
        return self.batching.epoch_micro_batches(self.lengths(self.packed), self.lengths(True), epoch,
                                                 self.rank if rank is None else rank, self.world_size, self.kinds)

    @property
    def kto(self) -> bool:
        """Unpaired examples (loss_type kto, alone or with pairwise terms: sigmoid,kto): each batch of them
        also scores its mismatched prompt-completion pairs."""
        loss_type = getattr(self.cfg, "loss_type", None)  # SFT runs have none
        return loss_type is not None and "kto" in loss_names(loss_type)

    @property
    def kinds(self) -> list[str] | None:
        """Each row's kind when the loss takes unpaired examples (and maybe pairs): a micro-step, on every
        rank, is all pairs or all unpaired examples (minidpo.data.plan.batch_plan), so that it runs one path."""
        if not self.kto:
            return None
        return ["pairs" if label is None else "unpaired examples" for label in self.dataset.labels]

    def unpaired(self, indices) -> bool:
        """A micro-batch of unpaired examples (KTO's), not of pairs: micro-batches hold one kind."""
        return self.kto and self.dataset.labels[indices[0]] is not None

    @property
    def listwise(self) -> bool:
        """K ranked answers a row (loss_type listwise_pairs / plackett_luce): one [prompt, answer_1..K] row each."""
        loss_type = getattr(self.cfg, "loss_type", None)
        return loss_type is not None and any(n in LISTWISE_LOSSES for n in loss_names(loss_type))

    @property
    def unit(self) -> str:
        """What a row is called in messages: "lists" (listwise) or "pairs"."""
        return "lists" if self.listwise else "pairs"

    def collate(self, indices):
        pairs = [self.dataset[i] for i in indices]
        if self.listwise:
            return collate_listwise(pairs, self.tokenizer.pad_token_id)
        if self.unpaired(indices):
            pairs = kto_pairs(pairs, self.cfg.max_length)
        return (collate_packed if self.packed else collate_pairs)(pairs, self.tokenizer.pad_token_id)

    def micro_batches(self, start_step: int):
        """(micro-step index in epoch, pair indices, padded batch on the device) from `start_step` on.
        The order is a pure function of (seed, epoch, rank), so a resumed run skips exactly what was done."""
        cfg, dev = self.cfg, device()
        step = start_step
        while step < self.total_steps:
            epoch = step // self.steps_per_epoch
            plan = self.epoch_plan(epoch)[:self.steps_per_epoch * cfg.grad_accum]
            first = (step - epoch * self.steps_per_epoch) * cfg.grad_accum
            for micro, indices in enumerate(plan[first:], start=first):
                batch = self.collate(indices)
                yield micro, indices, {k: v.to(dev) for k, v in batch.items()}
            step = (epoch + 1) * self.steps_per_epoch

    def pairs_per_micro(self, step: int) -> float:
        """What a micro-batch's summed losses are divided by, so that optimizer step `step` (0-based)
        minimises the mean over all its pairs, across micro-steps and ranks (DeepSpeed's backward divides
        by grad_accum, its all-reduce averages over ranks): batch_size with fixed batches, else the step's
        pair count / (grad_accum x world_size), known on every rank because the plan is a pure function."""
        if not self.cfg.max_tokens_per_batch:
            return self.cfg.batch_size
        epoch, within = divmod(step, self.steps_per_epoch)
        if epoch not in self._step_pairs:
            steps = self.batching.epoch_steps(self.lengths(True), epoch, self.world_size)
            self._step_pairs = {epoch: [sum(len(b) for b in s) for s in steps]}
        return self._step_pairs[epoch][within] / (self.cfg.grad_accum * self.world_size)

    def trained_pairs(self) -> list[int]:
        """Every pair some rank trains on in this run's total_steps (all epochs' plans): what
        --precompute_ref needs scored."""
        used = set()
        for epoch in range(-(-self.total_steps // self.steps_per_epoch)):
            steps = min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)
            if self.cfg.max_tokens_per_batch:  # every rank's micro-batches at once
                plan = self.batching.epoch_steps(self.lengths(True), epoch, self.world_size)[:steps]
                used.update(i for step in plan for batch in step for i in batch)
                continue
            for rank in range(self.world_size):
                plan = self.epoch_plan(epoch, rank)
                used.update(i for batch in plan[:steps * self.cfg.grad_accum] for i in batch)
        return sorted(used)


def prepare_run(cfg, check_data: Callable | None = None) -> Run:
    """Check, start the process group, resolve the DeepSpeed config, load the tokenizer and the data;
    `check_data(cfg, dataset)` checks its rows' kinds before the step plan, which depends on them."""
    check_settings(cfg)
    rank, world_size = setup_distributed(cfg.dist_timeout)
    resolve_model_sources(cfg, rank)
    ds_config = resolve_ds_config(cfg.deepspeed, cfg, world_size, on_cpu())
    log = print if rank == 0 else (lambda *a, **k: None)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    dataset = load_data(cfg, tokenizer, rank, log)
    if check_data is not None:
        check_data(cfg, dataset)
    run = Run(cfg, rank, world_size, ds_config, tokenizer, dataset, 0, 0, log)
    try:
        micro_per_epoch = len(run.epoch_plan(0))
    except ValueError as e:  # fewer pairs than one step
        raise ConfigError(f"--data {cfg.data}: {e}") from e
    run.steps_per_epoch = micro_per_epoch // cfg.grad_accum
    if run.steps_per_epoch == 0:
        raise ConfigError(f"--data {cfg.data}: {len(dataset)} {run.unit} make less than one optimizer step of "
                          f"{cfg.batch_size} x {cfg.grad_accum} x {world_size} {run.unit}")
    run.total_steps = run.steps_per_epoch * cfg.epochs
    if cfg.max_steps > 0:
        run.total_steps = min(run.total_steps, cfg.max_steps)
    if rank == 0:
        write_text_atomic(os.path.join(cfg.output_dir, "run_config.json"), json.dumps(
            {"run": cfg.to_dict(), "deepspeed": ds_config, "world_size": world_size, "total_steps": run.total_steps,
             "data": dataset.stats.summary()}, indent=2))
    return run


def start_or_resume(run: Run, log) -> tuple[dict, bool]:
    """(the resume fingerprint, whether a checkpoint will be resumed), checked before any heavy work."""
    fingerprint = checkpoint.fingerprint(run.cfg, run.world_size)
    resuming = run.cfg.resume and checkpoint.check_resume(run.cfg, fingerprint, log)
    return fingerprint, resuming


def write_summary(run: Run, steps: int, seconds: float, totals: dict | None = None,
                  skipped_steps: int | None = None, health: list[dict] | None = None) -> dict:
    """summary.json: steps, training seconds, and (DPO) the run's pair, token and padding totals and its
    health warnings (minidpo.health; None: the checks were off or this is not rank 0). "pairs" counts
    the data's rows (and trained.pairs the rows trained): a listwise run's lists, which it also gives as
    "lists" (with "answers", all K of every list) and trained.lists."""
    summary = {"steps": steps, "seconds": round(seconds, 3), "pairs": len(run.dataset),
               "world_size": run.world_size, "export": os.path.join(run.cfg.output_dir, "export")}
    if run.listwise:
        summary.update(lists=len(run.dataset), answers=sum(len(r.answer_ids) for r in run.dataset))
    if skipped_steps is not None:  # updates skipped for a non-finite loss or gradient (minidpo.nonfinite)
        summary["train/skipped_steps"] = skipped_steps
    if totals:
        summary["trained"] = {k: int(v) for k, v in totals.items()}
        if run.listwise:
            summary["trained"]["lists"] = summary["trained"]["pairs"]
    if health is not None:
        summary["health"] = health
    if run.rank == 0:
        write_text_atomic(os.path.join(run.cfg.output_dir, "summary.json"), json.dumps(summary, indent=2))
        run.log(f"done: {steps} steps in {summary['seconds']} s; Hugging Face export in {summary['export']}")
        if health:
            run.log(f"minidpo: {len(health)} health warning(s) in {run.cfg.output_dir}/summary.json (docs/health.md)")
    return summary


def main_for(entry, config_cls, description: str, argv: list[str] | None = None) -> None:
    """A training entry point: parse flags, run, and turn the errors a user can fix into one line."""
    set_offline_environment()

    def run():
        entry(parse_config(argv, config_cls, description))
        if dist.is_initialized():
            dist.barrier()  # no rank tears the process group down while another still uses it

    code = run_cli(run, peer_failure=peer_failure_message, on_exit=teardown)
    if code:
        sys.exit(code)
