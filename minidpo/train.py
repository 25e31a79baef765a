"""The DPO training loop: init -> epochs -> batches -> reference log-probs -> policy log-probs -> loss
-> backward -> step at the accumulation boundary -> log -> save."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from minidpo import checkpoint, faults, lora
from minidpo.config import ConfigError, RunConfig, parse_config, reference_ds_config, resolve_ds_config, validate
from minidpo.data import DataError, batch_plan, collate_pairs, load_preference_data
from minidpo.data.collate import collate_packed, padded_length, real_tokens
from minidpo.data.sampler import budget_steps, rank_micro_batches
from minidpo.engine import (
    build_policy_engine,
    build_reference_engine,
    device,
    load_causal_lm,
    load_tokenizer,
    on_cpu,
    setup_distributed,
    warmup_cosine,
)
from minidpo.logprobs import packed_forward_unsupported, pair_logps
from minidpo.losses import needs_reference, preference_loss
from minidpo.metrics import MetricTracker
from minidpo.moe import RouterLoss, sums_over_layers
from minidpo.reference import load_or_compute_reference_logps


def enable_moe_aux_loss(model, coef: float | None) -> float:
    """Ask a mixture-of-experts model for its router aux loss; returns the weight to add it with.
    MiniMind's loss (summed over layers) is computed by minidpo.moe.RouterLoss, not by the model."""
    if sums_over_layers(model.config):
        return coef if coef is not None else float(model.config.router_aux_loss_coef)
    if getattr(model.config, "output_router_logits", None) is None:
        return 0.0
    model.config.output_router_logits = True
    return coef if coef is not None else float(getattr(model.config, "router_aux_loss_coef", 0.0))


def load_data(cfg: RunConfig, tokenizer, rank: int, log):
    """Rank 0 prepares (and caches) the data first, so the other ranks read the cache instead of redoing it."""
    def load():
        return load_preference_data(
            cfg.data, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
            data_format=cfg.data_format, on_bad_record=cfg.on_bad_record, log=log,
            chat_template=cfg.chat_template,
        )
    dataset = load() if rank == 0 else None
    dist.barrier()
    return dataset if rank == 0 else load()


@dataclass
class Run:
    """What both training loops (DPO here, SFT in minidpo.sft) set up the same way."""

    cfg: RunConfig
    rank: int
    world_size: int
    ds_config: dict
    tokenizer: object
    dataset: object
    steps_per_epoch: int
    total_steps: int
    log: Callable
    collate: Callable = collate_pairs  # collate_packed for the shared-prompt forward
    _step_pairs: dict = field(default_factory=dict)  # token budget: {epoch: pairs of each step, all ranks}

    def micro_batches(self, start_step: int):
        """(micro-step index in epoch, pair indices, padded batch on the device) from `start_step` on.
        The order is a pure function of (seed, epoch, rank), so a resumed run skips exactly what was done."""
        cfg, dev = self.cfg, device()
        step = start_step
        while step < self.total_steps:
            epoch = step // self.steps_per_epoch
            plan = epoch_plan(cfg, self.dataset, epoch, self.rank, self.world_size,
                              packed=self.collate is collate_packed)
            plan = plan[:self.steps_per_epoch * cfg.grad_accum]
            first = (step - epoch * self.steps_per_epoch) * cfg.grad_accum
            for micro, indices in enumerate(plan[first:], start=first):
                batch = self.collate([self.dataset[i] for i in indices], self.tokenizer.pad_token_id)
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
            steps = epoch_budget_steps(self.cfg, self.dataset, epoch, self.world_size)
            self._step_pairs = {epoch: [sum(len(b) for b in s) for s in steps]}
        return self._step_pairs[epoch][within] / (self.cfg.grad_accum * self.world_size)

    def trained_pairs(self) -> list[int]:
        """Every pair some rank trains on in this run's total_steps (all epochs' plans): what
        --precompute_ref needs scored."""
        used = set()
        for epoch in range(-(-self.total_steps // self.steps_per_epoch)):
            steps = min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)
            if self.cfg.max_tokens_per_batch:  # every rank's micro-batches at once
                plan = epoch_budget_steps(self.cfg, self.dataset, epoch, self.world_size)[:steps]
                used.update(i for step in plan for batch in step for i in batch)
                continue
            for rank in range(self.world_size):
                plan = epoch_plan(self.cfg, self.dataset, epoch, rank, self.world_size,
                                  packed=self.collate is collate_packed)
                used.update(i for batch in plan[:steps * self.cfg.grad_accum] for i in batch)
        return sorted(used)


def epoch_plan(cfg: RunConfig, dataset, epoch: int, rank: int, world_size: int, *,
               packed: bool = False) -> list[list[int]]:
    """This rank's micro-batches (pair indices) for one epoch, grouped by the length of what a batch
    pads: packed rows are prompt + both answers long, plain rows prompt + the longer answer."""
    if cfg.max_tokens_per_batch:  # token budget: micro-batch sizes vary (minidpo.data.sampler.budget_steps)
        return rank_micro_batches(epoch_budget_steps(cfg, dataset, epoch, world_size), rank, world_size)
    lengths = [padded_length(p, packed) for p in dataset]
    return batch_plan(lengths, cfg.batch_size, seed=cfg.seed, epoch=epoch, rank=rank,
                      world_size=world_size, group_by_length=cfg.group_by_length)


def epoch_budget_steps(cfg: RunConfig, dataset, epoch: int, world_size: int) -> list[list[list[int]]]:
    """One epoch's optimizer steps under --max_tokens_per_batch. The budget counts packed positions
    (pairs x the longest [prompt, chosen, rejected] row), whichever forward runs, so the plan is known
    before the model is loaded; the two-sequence forward computes between 1x and 2x that."""
    lengths = [padded_length(p, True) for p in dataset]
    return budget_steps(lengths, cfg.max_tokens_per_batch, grad_accum=cfg.grad_accum, world_size=world_size,
                        seed=cfg.seed, epoch=epoch, epochs=cfg.epochs, group_by_length=cfg.group_by_length)


def resolve_model_sources(cfg: RunConfig, rank: int) -> None:
    """Point --model / --ref_model at Hugging Face folders: a file that is not one (GGUF, ...) is
    converted once into a cached folder (minidpo.sources), rank 0 first so the others find the cache."""
    from minidpo.sources import hf_folder

    for turn in (0, 1):
        if (rank == 0) == (turn == 0):
            cfg.model = hf_folder(cfg.model, tokenizer=cfg.tokenizer, role="--model")
            cfg.ref_model = cfg.ref_model and hf_folder(cfg.ref_model, tokenizer=cfg.tokenizer, role="--ref_model")
        dist.barrier()


def prepare_run(cfg: RunConfig) -> Run:
    """Validate, start the process group, resolve the DeepSpeed config, load the tokenizer and the data."""
    validate(cfg)
    rank, world_size = setup_distributed(cfg.dist_timeout)
    resolve_model_sources(cfg, rank)
    ds_config = resolve_ds_config(cfg.deepspeed, cfg, world_size, on_cpu())
    log = print if rank == 0 else (lambda *a, **k: None)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    dataset = load_data(cfg, tokenizer, rank, log)
    try:
        micro_per_epoch = len(epoch_plan(cfg, dataset, 0, rank, world_size))
    except ValueError as e:  # fewer pairs than one step
        raise ConfigError(f"--data {cfg.data}: {e}") from e
    steps_per_epoch = micro_per_epoch // cfg.grad_accum
    if steps_per_epoch == 0:
        raise ConfigError(f"--data {cfg.data}: {len(dataset)} pairs make less than one optimizer step of "
                          f"{cfg.batch_size} x {cfg.grad_accum} x {world_size} pairs")
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps > 0:
        total_steps = min(total_steps, cfg.max_steps)
    if rank == 0:
        with open(os.path.join(cfg.output_dir, "run_config.json"), "w") as f:
            json.dump({"run": cfg.to_dict(), "deepspeed": ds_config, "world_size": world_size,
                       "total_steps": total_steps, "data": dataset.stats.summary()}, f, indent=2)
    return Run(cfg, rank, world_size, ds_config, tokenizer, dataset, steps_per_epoch, total_steps, log)


def choose_collate(cfg: RunConfig, model, log) -> Callable:
    """collate_packed (shared-prompt forward) when asked for and the model takes it, else collate_pairs."""
    if not cfg.shared_prompt:
        return collate_pairs
    reason = packed_forward_unsupported(model)
    if reason:
        log(f"minidpo: shared-prompt forward off ({reason}); chosen and rejected run as two sequences")
        return collate_pairs
    return collate_packed


def pair_tokens(pairs) -> int:
    """Tokens of [prompt + chosen] and [prompt + rejected]: the work a pair is, however it is batched."""
    return sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)


def response_lengths(pairs, reduction: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Response tokens per chosen and per rejected answer: what the log-probs sum over (the loss mask
    covers exactly the answer's ids); ones when the log-probs are already per-token means."""
    ones = reduction == "mean"
    lengths = [(1, 1) if ones else (len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]
    return torch.tensor(lengths, dtype=torch.float32, device=device).unbind(1)


def loss_settings(cfg: RunConfig) -> dict:
    """The run config's settings of `minidpo.losses.preference_loss`."""
    return dict(beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing, rpo_alpha=cfg.rpo_alpha,
                loss_weights=cfg.loss_weights, simpo_gamma=cfg.simpo_gamma, discopop_tau=cfg.discopop_tau)


def train(cfg: RunConfig) -> dict:
    with faults.StopRequest() as stop:  # SIGTERM / Ctrl-C: finish the step, save, exit 0
        return _train(cfg, stop)


def _train(cfg: RunConfig, stop: faults.StopRequest) -> dict:
    run = prepare_run(cfg)
    fingerprint = faults.fingerprint(cfg, run.world_size)
    resuming = cfg.resume and checkpoint.check_resume(cfg, fingerprint, run.log)  # before the heavy work
    policy_model = load_causal_lm(cfg.model, trainable=True, activation_checkpointing=cfg.activation_checkpointing,
                                  allow_pickle=cfg.allow_pickle_weights)
    if lora.enabled(cfg):
        policy_model = lora.wrap(policy_model, cfg, run.log)
    aux_coef = enable_moe_aux_loss(policy_model, cfg.aux_loss_coef)
    router = RouterLoss.attach(policy_model)  # MiniMind's MoE aux loss; None for other models
    run.collate = choose_collate(cfg, policy_model, run.log)
    policy = build_policy_engine(
        policy_model, run.ds_config, warmup_cosine(run.total_steps, cfg.warmup_steps, cfg.min_lr_ratio))

    def make_reference():
        if lora.reference_is_policy(cfg):  # no second copy of the weights: the policy with its adapter off
            return lora.AdapterOffReference(policy)
        model = load_causal_lm(cfg.ref_model_path, trainable=False, allow_pickle=cfg.allow_pickle_weights)
        return build_reference_engine(model, reference_ds_config(run.ds_config))

    started = time.perf_counter()  # the reference pass of --precompute_ref is part of the training time
    ref_table = reference = None
    if cfg.precompute_ref:  # the reference engine is built only on a cache miss, and dropped after
        ref_table = load_or_compute_reference_logps(
            make_reference, run.dataset, cfg, collate=run.collate, pad_token_id=run.tokenizer.pad_token_id, device=device(),
            rank=run.rank, world_size=run.world_size, log=run.log,
            pairs=run.trained_pairs())
    elif needs_reference(cfg.loss_type):  # SimPO, CPO, ORPO: no reference at all (and no precompute_ref)
        reference = make_reference()
    state = checkpoint.resume(policy, cfg.output_dir) if resuming else {"step": 0}
    step, rank_state = state["step"], state.get("rank_state", {})
    run.log(f"minidpo: {len(run.dataset)} pairs, {run.world_size} rank(s), {run.total_steps} optimizer steps "
            f"({run.steps_per_epoch}/epoch), ZeRO-{policy.zero_optimization_stage()}, {cfg.dtype}"
            + (f", resumed at step {step}" if step else ""))

    tracker = MetricTracker(cfg.output_dir, run.total_steps, run.rank, start_step=step)
    tracker.load_state_dict(rank_state.get("metrics"))
    guard = faults.NonFiniteGuard(policy, cfg.max_skipped_steps)
    saved = checkpoint.latest_path(cfg.output_dir)

    def save(step: int, export: bool) -> str:
        return checkpoint.save(policy, run.tokenizer, cfg.output_dir, step, {"step": step}, keep=cfg.keep_checkpoints,
                               export=export, rank_state={"metrics": tracker.state_dict()},
                               meta={"fingerprint": fingerprint})
    for micro, indices, batch in run.micro_batches(step):
        ref_chosen = ref_rejected = None  # a reference-free loss has none
        if ref_table is not None:
            ref_chosen, ref_rejected = ref_table[indices].to(batch["input_ids"].device).unbind(1)
        elif reference is not None:
            with torch.no_grad():
                ref_chosen, ref_rejected, _ = pair_logps(reference, batch, cfg.logps_reduction)
        if router:
            router.clear()
        chosen, rejected, aux_loss = pair_logps(policy, batch, cfg.logps_reduction)
        if router:
            aux_loss = router.loss(batch)
        chosen_lengths, rejected_lengths = response_lengths([run.dataset[i] for i in indices], cfg.logps_reduction,
                                                            chosen.device)
        losses, chosen_rewards, rejected_rewards = preference_loss(
            chosen, rejected, ref_chosen, ref_rejected, chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths, **loss_settings(cfg))
        loss = losses.sum() / run.pairs_per_micro(step)  # the step's loss: the mean over all its pairs
        if aux_loss is not None and aux_coef:
            loss = loss + aux_coef * aux_loss
        loss = faults.poison_loss(loss, step + 1)  # a test hook; the identity unless MINIDPO_FAULT asks
        policy.backward(loss)
        lr = policy.get_lr()[0]
        guard.step()  # DeepSpeed only updates the weights at the accumulation boundary, and not when non-finite
        tracker.add_micro_step(losses, chosen_rewards, rejected_rewards, chosen, rejected,
                               tokens=pair_tokens(run.dataset[i] for i in indices),
                               positions=batch["input_ids"].numel(), real_positions=real_tokens(batch),
                               aux_loss=0.0 if aux_loss is None else aux_loss.item())
        if (micro + 1) % cfg.grad_accum:
            continue
        step += 1
        tracker.add_optimizer_step(policy.get_global_grad_norm(), lr, skipped=guard.after_step(step, saved))
        if step % cfg.log_interval == 0 or step == run.total_steps:
            tracker.log(step)
        faults.inject("step", step)
        if step == run.total_steps:
            break
        stopping = stop.agreed()  # collective: every rank stops at the same step
        if stopping or (cfg.save_interval and step % cfg.save_interval == 0):
            saved = save(step, cfg.export)
        if stopping:
            tracker.close()
            run.log(f"minidpo: stopped at step {step}/{run.total_steps} ({stop.signal_name}); checkpoint {saved}")
            run.log(faults.resume_hint(cfg.output_dir))
            return {"steps": step, "stopped": stop.signal_name, "checkpoint": saved}

    seconds = time.perf_counter() - started  # the final save and export are not training time
    save(step, False)
    checkpoint.export_hf(policy, run.tokenizer, os.path.join(cfg.output_dir, "export"))
    tracker.close()
    return write_summary(run, step, seconds, tracker.totals, skipped_steps=tracker.skipped_steps)


def write_summary(run: Run, steps: int, seconds: float, totals: dict | None = None,
                  skipped_steps: int | None = None) -> dict:
    """summary.json: steps, training seconds, and (DPO) the run's pair, token and padding totals."""
    summary = {"steps": steps, "seconds": round(seconds, 3), "pairs": len(run.dataset),
               "world_size": run.world_size, "export": os.path.join(run.cfg.output_dir, "export")}
    if skipped_steps is not None:  # updates skipped for a non-finite loss or gradient (minidpo.faults)
        summary["train/skipped_steps"] = skipped_steps
    if totals:
        summary["trained"] = {k: int(v) for k, v in totals.items()}
    if run.rank == 0:
        with open(os.path.join(run.cfg.output_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        run.log(f"done: {steps} steps in {summary['seconds']} s; Hugging Face export in {summary['export']}")
    return summary


def run_cli(entry, config_cls, description: str, argv: list[str] | None = None) -> None:
    """Parse flags, run, and turn the errors a user can fix into one line on stderr (exit code 2)."""
    try:
        entry(parse_config(argv, config_cls, description))
        if dist.is_initialized():
            dist.barrier()  # no rank tears the process group down while another still uses it
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except faults.FaultError as e:  # non-finite steps, a failed save
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except Exception as e:
        message = faults.peer_failure_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(4)  # not the process-group teardown: it could wait on the dead rank
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    run_cli(train, RunConfig, "DPO training on DeepSpeed (see README.md)", argv)
