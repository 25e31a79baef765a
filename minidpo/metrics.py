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
_KEYS = ["pairs", "tokens", "positions", "real_positions", "aux_loss", "micro_steps", *PAIR_MEANS.values(),
         *HEALTH_KEYS, *KTO_KEYS]


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
                 health=None, trackers: list | None = None):
        """health: a minidpo.health.HealthMonitor (rank 0; None: no checks); trackers: the other backends of
        minidpo.trackers (rank 0), sent the same scalars and the health warnings."""
        self.rank = rank
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
                       correct=None):
        """Record one micro-batch (tensors of shape (B,) on any device). `tokens`: the pairs' prompt+answer
        tokens (prompt counted per answer); `positions` / `real_positions`: what the forward computed,
        with and without padding. For the health checks: `logratios`, the (chosen, rejected) log pi - log ref
        (None without a reference), and `lengths`, what makes them per token (ones for per-token means).
        KTO: `kto` = (labels (B,) bool, the KL reference point); the rewards and log-probs are then each
        example's, chosen_* the desirable ones' (0 elsewhere) and rejected_* the undesirable ones', so
        rewards/accuracies is the share of examples whose reward has their label's sign.
        Listwise rows: `correct` = the micro-batch's ordered-pair accuracy x its lists (B,) (chosen_* the best
        answer's, rejected_* the worst's), so rewards/accuracies is the lists' mean pair accuracy."""
        on_device = {
            "loss": losses.detach().sum(),
            "chosen_reward": chosen_rewards.sum(),
            "rejected_reward": rejected_rewards.sum(),
            "correct": (chosen_rewards > rejected_rewards).sum() if correct is None else correct,
            "margin": (chosen_rewards - rejected_rewards).sum(),
            "chosen_logps": chosen_logps.detach().sum(),
            "rejected_logps": rejected_logps.detach().sum(),
        }
        if logratios is not None:
            chosen, rejected = (r.detach().double() / n for r, n in zip(logratios, lengths))
            on_device.update(chosen_logratio_tok=chosen.sum(), chosen_drift_tok=chosen.abs().sum(),
                             correct_tok=(chosen > rejected).sum())
        if kto is not None:
            labels, kl = kto
            on_device.update(desirable=labels.sum(), undesirable=(~labels).sum(),
                             kl=torch.as_tensor(kl, device=labels.device))
        values = dict(zip(on_device, torch.stack([v.double() for v in on_device.values()]).tolist()))  # one copy
        values.update({
            "pairs": losses.numel(),
            "tokens": tokens,
            "positions": positions,
            "real_positions": real_positions,
            "aux_loss": float(aux_loss) * losses.numel(),
            "micro_steps": 1,
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
        for key in self.totals:
            self.totals[key] += s[key]
        pairs = max(s["pairs"], 1.0)
        row = {name: s[key] / pairs for name, key in PAIR_MEANS.items()} if s["pairs"] else {}
        if s["desirable"] + s["undesirable"]:  # KTO: the means over each label's examples
            for side, count in (("chosen", "desirable"), ("rejected", "undesirable")):
                n = max(s[count], 1.0)
                row.update({f"rewards/{side}": s[f"{side}_reward"] / n, f"logps/{side}": s[f"{side}_logps"] / n})
            row["kl"] = s["kl"] / max(s["micro_steps"], 1.0)
            row["kto/desirable_share"] = s["desirable"] / (s["desirable"] + s["undesirable"])
        row["learning_rate"] = self.lr
        if s["pairs"]:  # else every step of the interval was skipped (non-finite): nothing was measured
            row.update({
                "perf/tokens_per_s": s["tokens"] / elapsed,
                "perf/pairs_per_s": s["pairs"] / elapsed,
                "perf/padding": 1.0 - s["real_positions"] / max(s["positions"], 1.0),
            })
        row["memory/peak_gb"] = peak
        if grad_norms:
            row["grad_norm"] = sum(grad_norms) / len(grad_norms)
        if s["aux_loss"]:
            row["aux_loss"] = s["aux_loss"] / pairs
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
            self.bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['rewards/accuracies']:.2f}", lr=f"{self.lr:.2e}")
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
