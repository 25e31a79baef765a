"""Training metrics: sums over micro-steps and ranks, then TensorBoard, metrics.jsonl and a progress bar.

Everything is accumulated as sums with a pair count and divided once at log time, after one
all-reduce across ranks, so a mean is exact whatever the accumulation steps, ranks or batch sizes
(an accuracy can never exceed 1). Only rank 0 writes. Names follow TRL so runs can be compared.
"""

from __future__ import annotations

import json
import os
import resource
import time

import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from minidpo.fsutil import write_text_atomic

# per-pair quantities summed over pairs; each TRL name -> our accumulator key
PAIR_MEANS = {
    "loss": "loss",
    "rewards/chosen": "chosen_reward",
    "rewards/rejected": "rejected_reward",
    "rewards/accuracies": "correct",
    "rewards/margins": "margin",
    "logps/chosen": "chosen_logps",
    "logps/rejected": "rejected_logps",
}
# for the health checks (minidpo.health), over the pairs with a reference: the chosen answers' per-token
# log-ratio (signed, absolute), and the pairs ranked right when each answer's log-ratio is taken per token
HEALTH_KEYS = ["ref_pairs", "chosen_logratio_tok", "chosen_drift_tok", "correct_tok"]
# KTO (unpaired examples): the desirable and undesirable examples, and the KL reference point summed per micro-step
KTO_KEYS = ["desirable", "undesirable", "kl"]
# every row (pairs and unpaired examples): the run's loss is their mean; then the unpaired examples' own sums,
# kept apart from the pairs' when a run trains both (loss_type sigmoid,kto). Last: older checkpoints lack them
ROW_KEYS = ["rows", "rows_loss"]
UNPAIRED_KEYS = ["kto_micro_steps", "kto_loss", "kto_correct", "desirable_reward", "undesirable_reward",
                 "desirable_logps", "undesirable_logps"]
# listwise rows: Kendall tau and NDCG of the implicit rewards against the scores, summed over the rows where
# they are defined (not NaN: at step 0 every reward ties), and those rows counted
RANKING_KEYS = ["tau_sum", "tau_rows", "ndcg_sum", "ndcg_rows"]
_KEYS = ["pairs", "tokens", "positions", "real_positions", "aux_loss", "micro_steps", *PAIR_MEANS.values(),
         *HEALTH_KEYS, *KTO_KEYS, *ROW_KEYS, *UNPAIRED_KEYS, *RANKING_KEYS]


def peak_memory_gb() -> float:
    """Peak memory of this process: accelerator memory on a GPU, resident set size on a CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def progress(iterable, *, total: int | None = None, desc: str, enabled: bool = True, unit: str = "it"):
    """A progress bar with rate and ETA on stderr (rank 0 only: pass enabled=rank == 0) for any pass
    that can take more than a few seconds."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, mininterval=1.0)


class MetricTracker:
    def __init__(self, output_dir: str, total_steps: int, rank: int, *, start_step: int = 0, tensorboard: bool = True,
                 health=None, trackers: list | None = None, kto_alone: bool = False):
        """health: a minidpo.health.HealthMonitor (rank 0; None: no checks); trackers: the other backends of
        minidpo.trackers (rank 0), sent the same scalars and the health warnings. kto_alone: loss_type kto
        without pairwise terms, whose examples are also logged under the pair names (rewards/chosen: the
        desirable ones'...), as TRL's KTOTrainer does; with pairwise terms they go under kto/* only."""
        self.rank = rank
        self.kto_alone = kto_alone
        self.step = start_step
        self.first = None  # optimizer step 1's own sums, until logged: the health checks' first loss
        self.health, self.trackers = health, trackers or []
        self.sums = torch.zeros(len(_KEYS), dtype=torch.float64)
        self.window = torch.zeros(len(_KEYS), dtype=torch.float64)  # this optimizer step's, until it is kept
        self.skipped_steps = 0  # optimizer steps whose update was skipped (non-finite), whole run
        self.grad_norms: list[float] = []
        self.lr = 0.0
        self.totals = {"pairs": 0.0, "tokens": 0.0, "positions": 0.0, "real_positions": 0.0}  # whole run, all ranks
        self.last_time = time.perf_counter()
        self.writer = self.jsonl = self.bar = None
        if rank != 0:
            return
        if tensorboard:
            after_last_event_file(os.path.join(output_dir, "tensorboard"))
            # purge_step: events of steps a resumed run writes again are dropped when TensorBoard reads them
            self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"), purge_step=start_step + 1)
        truncate_metrics(os.path.join(output_dir, "metrics.jsonl"), start_step)  # each step exactly once
        if health is not None and start_step:
            health.resume_from(os.path.join(output_dir, "metrics.jsonl"))
        self.jsonl = open(os.path.join(output_dir, "metrics.jsonl"), "a")
        self.bar = tqdm(total=total_steps, initial=start_step, desc="dpo", unit="step", dynamic_ncols=True)

    def add_micro_step(self, losses, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps, tokens, aux_loss,
                       positions: int = 0, real_positions: int = 0, logratios=None, lengths=None, kto=None,
                       correct=None, ranking=None):
        """Record one micro-batch (tensors of shape (B,) on any device). `tokens`: the pairs' prompt+answer
        tokens (prompt counted per answer); `positions` / `real_positions`: what the forward computed,
        with and without padding. For the health checks: `logratios`, the (chosen, rejected) log pi - log ref
        (None without a reference), and `lengths`, what makes them per token (ones for per-token means).
        KTO: `kto` = (labels (B,) bool, the KL reference point); the rewards and log-probs are then each
        example's, chosen_* the desirable ones' (0 elsewhere) and rejected_* the undesirable ones', so
        kto/accuracies (with kto_alone, rewards/accuracies) is the share of examples whose reward has their
        label's sign. A micro-batch is all pairs or all unpaired examples.
        Listwise rows: `correct` = the micro-batch's ordered-pair accuracy x its lists (B,) (chosen_* the best
        answer's, rejected_* the worst's), so rewards/accuracies is the lists' mean pair accuracy; `ranking` =
        (Kendall tau, NDCG) per list (B,), NaN where undefined, logged as listwise/kendall_tau, listwise/ndcg."""
        loss = losses.detach().sum()
        on_device = {"rows_loss": loss}
        as_pairs = kto is None or self.kto_alone  # logged under the pair names
        if as_pairs:
            on_device.update({
                "loss": loss,
                "chosen_reward": chosen_rewards.sum(),
                "rejected_reward": rejected_rewards.sum(),
                "correct": (chosen_rewards > rejected_rewards).sum() if correct is None else correct,
                "margin": (chosen_rewards - rejected_rewards).sum(),
                "chosen_logps": chosen_logps.detach().sum(),
                "rejected_logps": rejected_logps.detach().sum(),
            })
        if logratios is not None:
            chosen, rejected = (r.detach().double() / n for r, n in zip(logratios, lengths))
            on_device.update(chosen_logratio_tok=chosen.sum(), chosen_drift_tok=chosen.abs().sum(),
                             correct_tok=(chosen > rejected).sum())
        if ranking is not None:
            for name, per_row in zip(("tau", "ndcg"), ranking):
                defined = ~torch.isnan(per_row)
                on_device.update({f"{name}_sum": per_row.detach().double().nan_to_num().sum(),
                                  f"{name}_rows": defined.sum()})
        if kto is not None:
            labels, kl = kto
            on_device.update(desirable=labels.sum(), undesirable=(~labels).sum(),
                             kl=torch.as_tensor(kl, device=labels.device), kto_loss=loss,
                             kto_correct=(chosen_rewards > rejected_rewards).sum(),
                             desirable_reward=chosen_rewards.sum(), undesirable_reward=rejected_rewards.sum(),
                             desirable_logps=chosen_logps.detach().sum(),
                             undesirable_logps=rejected_logps.detach().sum())
        values = dict(zip(on_device, torch.stack([v.double() for v in on_device.values()]).tolist()))  # one copy
        values.update({
            "rows": losses.numel(),
            "pairs": losses.numel() if as_pairs else 0,
            "tokens": tokens,
            "positions": positions,
            "real_positions": real_positions,
            "aux_loss": float(aux_loss) * losses.numel(),
            "micro_steps": 1,
            "kto_micro_steps": int(kto is not None),
            "ref_pairs": losses.numel() if logratios is not None else 0,
        })
        self.window += torch.tensor([float(values.get(k, 0.0)) for k in _KEYS], dtype=torch.float64)

    def add_optimizer_step(self, grad_norm, lr: float, skipped: bool = False) -> None:
        """Keep the step's micro-step sums, or (skipped: a non-finite step) drop them and count it."""
        if skipped:
            self.skipped_steps += 1
        else:
            self.sums += self.window
            if self.step == 0:
                self.first = self.window.clone()
            if grad_norm is not None:
                self.grad_norms.append(float(grad_norm))
        self.step += 1
        self.window.zero_()
        self.lr = lr
        if self.bar is not None:
            self.bar.update(1)

    def log(self, step: int) -> dict | None:
        """All-reduce the interval's sums, write them (rank 0), reset. Collective: call on every rank."""
        first, self.first = self.first, None
        sums = self.sums.clone() if first is None else torch.cat([self.sums, first])  # one all-reduce for both
        if dist.is_initialized() and dist.get_world_size() > 1:
            memory = torch.tensor([peak_memory_gb()])
            dist.all_reduce(sums)
            dist.all_reduce(memory, op=dist.ReduceOp.MAX)
            peak = memory.item()
        else:
            peak = peak_memory_gb()
        elapsed = time.perf_counter() - self.last_time
        self.last_time = time.perf_counter()
        self.sums.zero_()
        grad_norms, self.grad_norms = self.grad_norms, []
        if self.rank != 0:
            return None
        s = dict(zip(_KEYS, sums.tolist()))
        first_step = None if first is None else dict(zip(_KEYS, sums[len(_KEYS):].tolist()))
        rows = s["rows"]  # pairs and unpaired examples
        for key in self.totals:
            self.totals[key] += rows if key == "pairs" else s[key]
        row = {name: s[key] / s["pairs"] for name, key in PAIR_MEANS.items()} if s["pairs"] else {}
        if rows:
            row["loss"] = s["rows_loss"] / rows  # what the steps minimise: the mean over all their rows
        row.update(self._unpaired_means(s))
        for name, key in (("tau", "listwise/kendall_tau"), ("ndcg", "listwise/ndcg")):
            if s[f"{name}_rows"]:
                row[key] = s[f"{name}_sum"] / s[f"{name}_rows"]
        row["learning_rate"] = self.lr
        if rows:  # else every step of the interval was skipped (non-finite): nothing was measured
            row.update({
                "perf/tokens_per_s": s["tokens"] / elapsed,
                "perf/pairs_per_s": rows / elapsed,
                "perf/padding": 1.0 - s["real_positions"] / max(s["positions"], 1.0),
            })
        row["memory/peak_gb"] = peak
        if grad_norms:
            row["grad_norm"] = sum(grad_norms) / len(grad_norms)
        if s["aux_loss"]:
            row["aux_loss"] = s["aux_loss"] / max(rows, 1.0)
        row["train/skipped_steps"] = self.skipped_steps
        warnings = {}
        if self.health is not None:
            health_scalars, warnings = self.health.observe(step, s, row.get("grad_norm"), first_step)
            row.update(health_scalars)
        for name, value in row.items():
            if self.writer is not None:
                self.writer.add_scalar(name, value, step)
        for tracker in self.trackers:
            tracker.log_scalars(row, step)
        if warnings:
            self._warn(step, warnings)
            row["health/warnings"] = warnings
        self.jsonl.write(json.dumps({"step": step, **row}) + "\n")
        self.jsonl.flush()
        if "loss" in row:
            accuracy = row.get("rewards/accuracies", row.get("kto/accuracies"))
            self.bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{accuracy:.2f}", lr=f"{self.lr:.2e}")
        return row

    def _unpaired_means(self, s: dict) -> dict:
        """KTO's scalars over the interval's unpaired examples: kl (the mean reference point of their
        micro-steps), kto/desirable_share, and each label's mean reward and log-prob: under rewards/chosen,
        rewards/rejected, logps/* with kto_alone, else (the pair names are the pairs') under kto/*."""
        examples = s["desirable"] + s["undesirable"]
        if not examples:
            return {}
        row = {"kl": s["kl"] / max(s["kto_micro_steps"], 1.0), "kto/desirable_share": s["desirable"] / examples}
        if self.kto_alone:
            for side, label in (("chosen", "desirable"), ("rejected", "undesirable")):
                n = max(s[label], 1.0)
                row.update({f"rewards/{side}": s[f"{label}_reward"] / n, f"logps/{side}": s[f"{label}_logps"] / n})
            return row
        row.update({"kto/loss": s["kto_loss"] / examples, "kto/accuracies": s["kto_correct"] / examples,
                    "kto/unpaired_share": examples / max(s["rows"], 1.0)})
        for label in ("desirable", "undesirable"):
            if s[label]:
                row.update({f"kto/rewards/{label}": s[f"{label}_reward"] / s[label],
                            f"kto/logps/{label}": s[f"{label}_logps"] / s[label]})
        return row

    def _warn(self, step: int, warnings: dict) -> None:
        """Print the health warnings above the progress bar and send them to every tracker."""
        for name, message in warnings.items():
            self.bar.write(f"minidpo: health warning at step {step}: {message}")
            if self.writer is not None:
                self.writer.add_text(f"health/{name}", message, step)
        for tracker in self.trackers:
            tracker.log_warnings(warnings, step)

    def state_dict(self) -> dict:
        """This rank's unlogged sums and the run's totals: saved with a checkpoint, so a resumed run logs
        the interval it was in the middle of exactly as an uninterrupted run would."""
        return {"sums": self.sums.clone(), "grad_norms": list(self.grad_norms), "lr": self.lr,
                "totals": dict(self.totals), "skipped_steps": self.skipped_steps, "first": self.first}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.sums = torch.zeros(len(_KEYS), dtype=torch.float64)
        self.sums[:len(state["sums"])] = state["sums"]  # a checkpoint older than the health keys has fewer
        self.grad_norms = list(state["grad_norms"])
        self.lr = state["lr"]
        self.totals = dict(state["totals"])
        self.skipped_steps = int(state["skipped_steps"])
        self.first = state.get("first")  # absent in checkpoints older than the health checks

    def close(self) -> None:
        if self.rank == 0:
            self.bar.close()
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()
            for tracker in self.trackers:
                tracker.close()


# --- after a resume: each step's row exactly once -------------------------------------------------

def truncate_metrics(path: str, last_step: int) -> int:
    """Keep the metrics.jsonl rows of steps <= last_step (the rows a resumed run will write again are
    dropped); returns how many were dropped."""
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= last_step:
                keep.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError, TypeError):  # a half-written last line of a killed run
            continue
    write_text_atomic(path, "".join(keep))
    return len(lines) - len(keep)


def after_last_event_file(folder: str) -> None:
    """TensorBoard reads a folder's event files in name order, whose first key is the writer's start
    second: a resumed run's writer must start in a later second than the killed one's, or its purge
    comes first and the killed run's rows stay visible. Waits at most a second."""
    if not os.path.isdir(folder):
        return
    stamps = [int(n.split(".")[3]) for n in os.listdir(folder)
              if n.startswith("events.out.tfevents.") and n.split(".")[3].isdigit()]
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.05)
