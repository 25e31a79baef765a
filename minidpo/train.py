"""The DPO training loop: init -> epochs -> batches -> reference log-probs -> policy log-probs -> loss
-> backward -> step at the accumulation boundary -> log -> save.

    deepspeed --num_gpus N --module minidpo.train --model ... --data ...   (or trainer/train_dpo.py)
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from minidpo import checkpoint, lora
from minidpo.config import RunConfig, report_to_names
from minidpo.ds_config import reference_ds_config
from minidpo.data.collate import real_tokens
from minidpo.data.listwise import TokenizedList, count_lists
from minidpo.engine import build_policy_engine, build_reference_engine, device
from minidpo.errors import ConfigError
from minidpo.fault_injection import inject, poison_loss
from minidpo.health import HealthMonitor, data_red_flags
from minidpo.listwise_logps import listwise_logps
from minidpo.logprobs import packed_forward_unsupported, pair_logps
from minidpo.losses import (
    LISTWISE_LOSSES,
    RunningRewardMean,
    batch_kl,
    kto_kl_value,
    kto_loss,
    listwise_loss,
    loss_names,
    needs_reference,
    pair_accuracy,
    preference_loss,
)
from minidpo.losses.listwise import kendall_tau, ndcg
from minidpo.losses.settings import split_kto
from minidpo.metrics import MetricTracker
from minidpo.models import load_causal_lm
from minidpo.moe import RouterLoss, sums_over_layers
from minidpo.nonfinite import NonFiniteGuard
from minidpo.reference import load_or_compute_reference_logps, reference_sync
from minidpo.run import main_for, prepare_run, start_or_resume, write_summary
from minidpo.schedule import warmup_cosine
from minidpo.signals import StopRequest, resume_hint
from minidpo.trackers import open_trackers


def enable_moe_aux_loss(model, coef: float | None) -> float:
    """Ask a mixture-of-experts model for its router aux loss; returns the weight to add it with.
    MiniMind's loss (summed over layers) is computed by minidpo.moe.RouterLoss, not by the model."""
    if sums_over_layers(model.config):
        return coef if coef is not None else float(model.config.router_aux_loss_coef)
    if getattr(model.config, "output_router_logits", None) is None:
        return 0.0
    model.config.output_router_logits = True
    return coef if coef is not None else float(getattr(model.config, "router_aux_loss_coef", 0.0))


def use_shared_prompt(cfg: RunConfig, model, log) -> bool:
    """The shared-prompt forward ([prompt, chosen, rejected] rows) when asked for and the model takes it."""
    if not cfg.shared_prompt:
        return False
    reason = packed_forward_unsupported(model)
    if reason:
        log(f"minidpo: shared-prompt forward off ({reason}); chosen and rejected run as two sequences")
        return False
    return True


def pair_tokens(pairs) -> int:
    """Tokens of [prompt + chosen] and [prompt + rejected]: the work a pair is, however it is batched."""
    return sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)


def list_tokens(rows) -> int:
    """Tokens of every [prompt + answer_k] of listwise rows: the work they are as separate sequences."""
    return sum(len(r.prompt_ids) * len(r.answer_ids) + sum(map(len, r.answer_ids)) for r in rows)


def response_lengths(pairs, reduction: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Response tokens per chosen and per rejected answer: what the log-probs sum over (the loss mask
    covers exactly the answer's ids); ones when the log-probs are already per-token means."""
    ones = reduction == "mean"
    lengths = [(1, 1) if ones else (len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]
    return torch.tensor(lengths, dtype=torch.float32, device=device).unbind(1)


def loss_settings(cfg: RunConfig) -> dict:
    """The run config's settings of `minidpo.losses.preference_loss`."""
    return dict(beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing, rpo_alpha=cfg.rpo_alpha,
                loss_weights=cfg.loss_weights, simpo_gamma=cfg.simpo_gamma, discopop_tau=cfg.discopop_tau,
                f_divergence_type=cfg.f_divergence_type, f_alpha_divergence_coef=cfg.f_alpha_divergence_coef)


def mean_over_ranks(world_size: int):
    """x -> its mean over the ranks (a collective), or None on one rank."""
    if world_size == 1:
        return None

    def mean(x: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x / world_size
    return mean


def bco_running_mean(cfg: RunConfig, world_size: int) -> RunningRewardMean | None:
    """bco_pair's delta: the running mean reward, the same on every rank (one all-reduce a micro-step)."""
    if "bco_pair" not in loss_names(cfg.loss_type):
        return None
    return RunningRewardMean(reduce=mean_over_ranks(world_size))


def check_data_kind(cfg: RunConfig, dataset) -> None:
    """Pairs for the pairwise losses, unpaired examples for kto, both for a mix (sigmoid,kto), lists for the
    listwise losses: the first record of another kind fails."""
    names = loss_names(cfg.loss_type)
    kto, listwise = "kto" in names, bool(set(names) & set(LISTWISE_LOSSES))
    pairwise = [n for n in names if n != "kto"]
    for source, label, row in zip(dataset.sources, dataset.labels, dataset):
        if listwise and not isinstance(row, TokenizedList):
            raise ConfigError(f"{source}: not a listwise record, but loss_type {names[0]} trains on K ranked "
                              'responses ({"prompt", "responses", "scores" or "ranking"}) only')
        if not listwise and isinstance(row, TokenizedList):
            raise ConfigError(f"{source}: a listwise record (K ranked responses): only loss_type "
                              f"{' or '.join(LISTWISE_LOSSES)} trains on those")
        if kto and not pairwise and label is None:
            raise ConfigError(f"{source}: a preference pair, but loss_type kto trains on unpaired examples only; "
                              "to train pairs and unpaired examples in one run: --loss_type sigmoid,kto")
        if not kto and label is not None:
            raise ConfigError(f"{source}: an unpaired example (prompt/completion/label): only loss_type kto "
                              f"trains on those; to train them with the pairs: --loss_type {','.join(names)},kto")


def kto_micro_step(cfg: RunConfig, labels: list[bool], logps, ref_logps, reduce, weight: float = 1.0):
    """KTO's (losses x `weight`, its loss_weights entry; rewards, labels tensor, KL reference point) of a
    micro-batch from `kto_pairs` rows: logps, ref_logps = (matched, mismatched) log-probs of the policy and
    of the reference."""
    labels = torch.tensor(labels, dtype=torch.bool, device=logps[0].device)
    fixed = kto_kl_value(cfg.kto_kl)
    kl = batch_kl(logps[1], ref_logps[1], reduce) if fixed is None else torch.tensor(fixed, device=labels.device)
    losses, rewards = kto_loss(logps[0], ref_logps[0], labels, kl, beta=cfg.beta, desirable_weight=cfg.desirable_weight,
                               undesirable_weight=cfg.undesirable_weight)
    return losses * weight, rewards, labels, kl


def listwise_micro_step(cfg: RunConfig, policy, reference, batch: dict, lists_per_micro: float,
                        ref_rows: torch.Tensor | None = None):
    """listwise_pairs / plackett_luce on collate_listwise rows: (the loss to backward, normalised per
    micro-step like pairs', the tracker's values). The reference's log-probs: `ref_rows`, the micro-batch's
    rows of --precompute_ref's (N, Kmax) table, else a forward of `reference`. The rewards and log-probs
    logged as chosen / rejected are the best and the worst answer's of each list; rewards/accuracies is the
    share of ordered pairs ranked right."""
    if ref_rows is not None:  # as wide as the data's longest list: cut to this batch's
        ref_logps = ref_rows[:, :batch["valid"].shape[1]].to(batch["input_ids"].device)
    else:
        with torch.no_grad():
            ref_logps = listwise_logps(reference, batch)
    logps = listwise_logps(policy, batch)
    scores, valid = batch["scores"], batch["valid"]
    loss, rewards = listwise_loss(loss_names(cfg.loss_type)[0], logps, ref_logps, scores, valid, beta=cfg.beta)
    lists = scores.shape[0]
    best = scores.masked_fill(~valid, float("-inf")).argmax(1, keepdim=True)
    worst = scores.masked_fill(~valid, float("inf")).argmin(1, keepdim=True)

    def best_and_worst(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.gather(1, best).squeeze(1), x.gather(1, worst).squeeze(1)
    chosen_rewards, rejected_rewards = best_and_worst(rewards)
    chosen, rejected = best_and_worst(logps.detach())
    values = dict(losses=loss.detach().expand(lists), chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards,
                  chosen_logps=chosen, rejected_logps=rejected, correct=pair_accuracy(rewards, scores, valid) * lists,
                  ranking=(kendall_tau(rewards, scores, valid), ndcg(rewards, scores, valid)))
    return loss * lists / lists_per_micro, values


def train(cfg: RunConfig) -> dict:
    with StopRequest() as stop:  # SIGTERM / Ctrl-C: finish the step, save, exit 0
        return _train(cfg, stop)


def _train(cfg: RunConfig, stop: StopRequest) -> dict:
    run = prepare_run(cfg, check_data=check_data_kind)
    # the data red flags read pairs' chosen/rejected ids: lists get none
    data_flags = data_red_flags(run.dataset, run.tokenizer, cfg) if cfg.health and run.rank == 0 and not run.listwise \
        else []
    for flag in data_flags:
        run.log(f"minidpo: data red flag: {flag}")
    fingerprint, resuming = start_or_resume(run, run.log)  # before the heavy work
    policy_model = load_causal_lm(cfg.model, trainable=True, activation_checkpointing=cfg.activation_checkpointing,
                                  allow_pickle=cfg.allow_pickle_weights)
    if lora.enabled(cfg):
        policy_model = lora.wrap(policy_model, cfg, run.log)
    aux_coef = enable_moe_aux_loss(policy_model, cfg.aux_loss_coef)
    router = RouterLoss.attach(policy_model)  # MiniMind's MoE aux loss; None for other models
    run.packed = use_shared_prompt(cfg, policy_model, run.log)
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
            make_reference, run.dataset, cfg, packed=run.packed, pad_token_id=run.tokenizer.pad_token_id,
            device=device(), rank=run.rank, world_size=run.world_size, log=run.log, pairs=run.trained_pairs())
    elif needs_reference(cfg.loss_type):  # SimPO, CPO, ORPO: no reference at all (and no precompute_ref)
        reference = make_reference()
    sync = reference_sync(cfg, policy, reference)  # TR-DPO's reference updates (None without --sync_ref_model)
    state = checkpoint.resume(policy, cfg.output_dir, reference=sync) if resuming else {"step": 0}
    step, rank_state = state["step"], state.get("rank_state", {})
    unpaired = sum(label is not None for label in run.dataset.labels)
    rows = f"{len(run.dataset) - unpaired} pairs + {unpaired} unpaired examples" if unpaired else \
        count_lists([len(r.answer_ids) for r in run.dataset]) if run.listwise else f"{len(run.dataset)} pairs"
    run.log(f"minidpo: {rows}, {run.world_size} rank(s), {run.total_steps} optimizer steps "
            f"({run.steps_per_epoch}/epoch), ZeRO-{policy.zero_optimization_stage()}, {cfg.dtype}"
            + (f", resumed at step {step}" if step else ""))

    health = HealthMonitor(cfg, data_flags) if cfg.health and run.rank == 0 else None
    reports = report_to_names(cfg.report_to)  # rank 0 writes them all
    # loss_type sigmoid,kto: pairs train with the pairwise terms, unpaired examples with kto (times its weight)
    pairwise, pairwise_weights, kto_weight = split_kto(cfg.loss_type, cfg.loss_weights)
    pair_loss = {**loss_settings(cfg), "loss_type": pairwise, "loss_weights": pairwise_weights}
    pair_reference = bool(pairwise) and needs_reference(pairwise)  # sigmoid,kto: yes; simpo,kto: not for pairs
    tracker = MetricTracker(cfg.output_dir, run.total_steps, run.rank, start_step=step, health=health,
                            tensorboard="tensorboard" in reports, kto_alone=run.kto and not pairwise,
                            trackers=open_trackers(reports, cfg.output_dir, cfg.to_dict()) if run.rank == 0 else None)
    tracker.load_state_dict(rank_state.get("metrics"))
    bco = bco_running_mean(cfg, run.world_size)  # bco_pair's delta, carried across steps and resumes
    if bco is not None:
        bco.load_state_dict(rank_state.get("bco"))
    guard = NonFiniteGuard(policy, cfg.max_skipped_steps)
    kl_reduce = mean_over_ranks(run.world_size)  # KTO's batch KL: one all-reduce a micro-step
    saved = checkpoint.latest_path(cfg.output_dir)

    def save(step: int, export: bool) -> str:
        return checkpoint.save(policy, run.tokenizer, cfg.output_dir, step, {"step": step}, keep=cfg.keep_checkpoints,
                               export=export, rank_state={"metrics": tracker.state_dict(),
                                                          **({"bco": bco.state_dict()} if bco else {})},
                               meta={"fingerprint": fingerprint}, reference=sync)

    def pair_micro_step(indices, batch) -> tuple[torch.Tensor, dict]:
        """A micro-batch of pairs or of KTO's unpaired examples (never both): (the loss to backward, the
        tracker's values)."""
        unpaired = run.unpaired(indices)
        ref_chosen = ref_rejected = None  # a reference-free loss has none
        if ref_table is not None:
            ref_chosen, ref_rejected = ref_table[indices].to(batch["input_ids"].device).unbind(1)
        elif reference is not None and (unpaired or pair_reference):
            with torch.no_grad():
                ref_chosen, ref_rejected, _ = pair_logps(reference, batch, cfg.logps_reduction)
        if router:
            router.clear()
        policy_out = pair_logps(policy, batch, cfg.logps_reduction, ld_alpha=cfg.ld_alpha, weights=cfg.use_weighting)
        chosen, rejected, aux_loss = policy_out[:3]
        pair_weights = policy_out[3] if cfg.use_weighting else None  # WPO
        if router:
            aux_loss = router.loss(batch)
        chosen_lengths, rejected_lengths = response_lengths([run.dataset[i] for i in indices], cfg.logps_reduction,
                                                            chosen.device)
        kto = None
        if unpaired:  # chosen: each example's completion, rejected: the mismatched pairs (minidpo.data.kto_pairs)
            losses, rewards, labels, kl = kto_micro_step(cfg, [run.dataset.labels[i] for i in indices],
                                                         (chosen, rejected), (ref_chosen, ref_rejected), kl_reduce,
                                                         kto_weight)
            kto = (labels, kl)
            chosen_rewards, rejected_rewards = rewards * labels, rewards * ~labels
            chosen, rejected = (chosen * labels).detach(), (chosen * ~labels).detach()
        else:
            losses, chosen_rewards, rejected_rewards = preference_loss(
                chosen, rejected, ref_chosen, ref_rejected, chosen_lengths=chosen_lengths,
                rejected_lengths=rejected_lengths, bco_delta=bco, pair_weights=pair_weights, **pair_loss)
        # the step's loss: the mean over all its rows (pairs and unpaired examples: batch_size each micro-batch)
        loss = losses.sum() / run.pairs_per_micro(step)
        if aux_loss is not None and aux_coef:
            loss = loss + aux_coef * aux_loss
        return loss, dict(losses=losses, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards,
                          chosen_logps=chosen, rejected_logps=rejected,
                          tokens=pair_tokens(run.dataset[i] for i in indices),
                          positions=batch["input_ids"].numel(), real_positions=real_tokens(batch),
                          aux_loss=0.0 if aux_loss is None else aux_loss.item(), kto=kto,
                          lengths=(chosen_lengths, rejected_lengths), logratios=None if ref_chosen is None or kto
                          else (chosen - ref_chosen, rejected - ref_rejected))

    for micro, indices, batch in run.micro_batches(step):
        if run.listwise:
            loss, values = listwise_micro_step(cfg, policy, reference, batch, run.pairs_per_micro(step),
                                               None if ref_table is None else ref_table[indices])
            values.update(tokens=list_tokens(run.dataset[i] for i in indices),
                          positions=batch["input_ids"].numel(), real_positions=real_tokens(batch), aux_loss=0.0)
        else:
            loss, values = pair_micro_step(indices, batch)
        loss = poison_loss(loss, step + 1)  # a test hook; the identity unless MINIDPO_FAULT asks
        policy.backward(loss)
        lr = policy.get_lr()[0]
        guard.step()  # DeepSpeed only updates the weights at the accumulation boundary, and not when non-finite
        tracker.add_micro_step(**values)
        if (micro + 1) % cfg.grad_accum:
            continue
        step += 1
        tracker.add_optimizer_step(policy.get_global_grad_norm(), lr, skipped=guard.after_step(step, saved))
        if sync:
            sync.after_step(step)  # TR-DPO: collective under ZeRO-3, the same step on every rank
        if step % cfg.log_interval == 0 or step == run.total_steps:
            tracker.log(step)
        inject("step", step)
        if step == run.total_steps:
            break
        stopping = stop.agreed()  # collective: every rank stops at the same step
        if stopping or (cfg.save_interval and step % cfg.save_interval == 0):
            saved = save(step, cfg.export)
        if stopping:
            tracker.close()
            run.log(f"minidpo: stopped at step {step}/{run.total_steps} ({stop.signal_name}); checkpoint {saved}")
            run.log(resume_hint(cfg.output_dir))
            return {"steps": step, "stopped": stop.signal_name, "checkpoint": saved}

    seconds = time.perf_counter() - started  # the final save and export are not training time
    save(step, False)
    checkpoint.export_hf(policy, run.tokenizer, os.path.join(cfg.output_dir, "export"))
    tracker.close()
    return write_summary(run, step, seconds, tracker.totals, skipped_steps=tracker.skipped_steps,
                         health=None if health is None else health.warnings())


def main(argv: list[str] | None = None) -> None:
    main_for(train, RunConfig, "DPO training on DeepSpeed (see README.md)", argv)


if __name__ == "__main__":
    main()
