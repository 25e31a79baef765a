"""The live checks: pure functions over the log intervals' exactly reduced sums (minidpo.metrics).

Each check reads the history of `Interval`s (oldest first) and the thresholds (HealthSettings) and
returns None or a one-line warning: what is seen, its likely cause, the settings to change, and the
threshold that fired it. Trend checks need `health_patience` intervals in a row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from minidpo.losses import REFERENCE_FREE, loss_names, preference_loss

LN2 = math.log(2)


@dataclass
class Interval:
    """One log interval, its means over every pair of every rank."""

    step: int
    loss: float
    chosen_reward: float
    rejected_reward: float
    accuracy: float
    margin: float
    grad_norm: float | None = None
    chosen_logratio: float | None = None  # mean log pi/ref of a chosen token (None: no reference)
    drift: float | None = None  # mean |log pi/ref| of a chosen token: a KL proxy
    accuracy_per_token: float | None = None  # accuracy with each answer's log-ratio taken per token


def interval_from_sums(step: int, s: dict, grad_norm: float | None = None) -> Interval | None:
    """An Interval from a log interval's reduced sums (minidpo.metrics' keys); None when no pair was kept."""
    n = s["pairs"]
    if not n:
        return None
    with_ref = s.get("ref_pairs", 0.0)
    return Interval(
        step=step, loss=s["loss"] / n, chosen_reward=s["chosen_reward"] / n, rejected_reward=s["rejected_reward"] / n,
        accuracy=s["correct"] / n, margin=s["margin"] / n, grad_norm=grad_norm,
        chosen_logratio=s["chosen_logratio_tok"] / with_ref if with_ref else None,
        drift=s["chosen_drift_tok"] / with_ref if with_ref else None,
        accuracy_per_token=s["correct_tok"] / with_ref if with_ref else None)


def _last(history: list[Interval], th) -> list[Interval] | None:
    return history[-th.health_patience:] if len(history) >= th.health_patience else None


def _falling(values: list[float]) -> bool:
    return all(b < a for a, b in zip(values, values[1:]))


def displacement(history: list[Interval], th) -> str | None:
    """Chosen log-probs falling with the rejected ones: both rewards negative and falling."""
    last = _last(history, th)
    if not last or any(i.chosen_reward >= 0 or i.rejected_reward >= 0 for i in last):
        return None
    if not _falling([i.chosen_reward for i in last]) or not _falling([i.rejected_reward for i in last]):
        return None
    now = last[-1]
    if now.chosen_logratio is None or now.chosen_logratio > -th.health_displacement:
        return None
    return (f"likelihood displacement: the chosen answers lose probability with the rejected ones (rewards/chosen "
            f"{now.chosen_reward:.3f}, rewards/rejected {now.rejected_reward:.3f}, chosen {now.chosen_logratio:.3f} "
            "nats/token vs the reference) - add RPO (--rpo_alpha 1.0), lower --learning_rate or raise --beta "
            f"[--health_displacement {th.health_displacement:g}]")


def saturation(history: list[Interval], th) -> str | None:
    """Accuracy ~1 with margins growing without bound and the policy far from the reference."""
    last = _last(history, th)
    if not last or last[-1].accuracy < th.health_accuracy or not _falling([-i.margin for i in last]):
        return None
    now = last[-1]
    if now.drift is None or now.drift < th.health_kl_per_token:
        return None
    return (f"over-optimisation: reward accuracy {now.accuracy:.2f} with margins still growing ({now.margin:.2f}) "
            f"and chosen answers {now.drift:.2f} nats/token from the reference - the preference is learnt and the "
            "model drifts on: fewer steps (--max_steps / --epochs), a larger --beta, or stop at an earlier "
            f"checkpoint [--health_kl_per_token {th.health_kl_per_token:g}, --health_accuracy {th.health_accuracy:g}]")


def length_exploitation(history: list[Interval], th) -> str | None:
    """The reward margin tracking the chosen-minus-rejected length difference: pairs are ranked right by
    their summed log-ratios far more often than by the same log-ratios per token, so the margins come
    from how many tokens each answer has, not from how the model prefers their tokens."""
    last = _last(history, th)
    if not last or any(i.accuracy_per_token is None or i.accuracy - i.accuracy_per_token < th.health_length_gap
                       for i in last):
        return None
    now = last[-1]
    return (f"length exploitation: reward accuracy {now.accuracy:.2f}, but {now.accuracy_per_token:.2f} with each "
            "answer's log-ratio per token - the margins track the chosen-minus-rejected length difference, the "
            "model may learn length, not quality: try --logps_reduction mean or loss_type sigmoid_norm / simpo "
            f"(per token), or balance answer lengths [--health_length_gap {th.health_length_gap:g}]")


def dead_learning(history: list[Interval], th, learning_rate: float) -> str | None:
    """Loss flat at its start: a ~0 gradient, or (a loss with a reference) a reward margin that stays ~0 after
    warmup. The margin is beta times the log-ratios' difference: what moves the loss, whatever the model."""
    if not history:
        return None
    now = history[-1]
    if now.grad_norm is not None and now.grad_norm < th.health_dead_grad_norm:
        return (f"dead learning: gradient norm {now.grad_norm:.1e} - no parameter is learning: frozen parameters, "
                f"an empty LoRA target list, or a detached loss [--health_dead_grad_norm {th.health_dead_grad_norm:g}]")
    last = _last([i for i in history if i.step > th.warmup_steps], th)  # the warmup's small steps do not count
    if not last or any(i.drift is None or abs(i.margin) >= th.health_dead_margin for i in last):
        return None
    return (f"dead learning: after {now.step} steps the reward margin is {now.margin:.1e} and the loss stays at "
            f"{now.loss:.4f} - --learning_rate {learning_rate:g} is far too small for this model (or the parameters "
            f"are frozen) [--health_dead_margin {th.health_dead_margin:g}]")


def expected_first_loss(cfg) -> float | None:
    """The loss of a step where the policy is the reference (ln 2 for DPO); None for a loss with a
    reference-free term (SimPO, CPO, ORPO, an SFT/RPO term) or WPO's pair weights, whose first value
    depends on the model."""
    names = loss_names(cfg.loss_type)
    if cfg.rpo_alpha or any(n in REFERENCE_FREE for n in names) or getattr(cfg, "use_weighting", False):
        return None
    if "kto" in names:  # 0.5 x the label's weight: a mean that depends on the data's share of each label
        return None
    if "plackett_luce" in names:  # the mean of log K! over the step's lists: it depends on the data's K
        return None
    if "listwise_pairs" in names:  # every ordered pair at a zero reward margin
        return math.log(2)
    zeros, ones = torch.zeros(2), torch.ones(2)
    losses, _, _ = preference_loss(
        zeros, zeros, zeros, zeros, beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing,
        chosen_lengths=ones, rejected_lengths=ones, loss_weights=cfg.loss_weights, simpo_gamma=cfg.simpo_gamma,
        discopop_tau=cfg.discopop_tau, f_divergence_type=cfg.f_divergence_type,
        f_alpha_divergence_coef=cfg.f_alpha_divergence_coef, bco_delta=0.0 if "bco_pair" in names else None)
    return float(losses.mean())


def reference_mismatch(first: dict, expected: float | None, th) -> str | None:
    """Optimizer step 1 (its sums `first`) is not at policy == reference: its loss is not `expected` (when
    the loss has a value there), or its chosen answers' log-ratios to the reference are not ~0 (which a
    small beta hides from the loss)."""
    hint = ("a --ref_model that is not --model, a stale --precompute_ref cache, or dropout left on in the model "
            "config")
    if expected is not None:
        loss = first["loss"] / first["pairs"]
        if abs(loss - expected) > th.health_first_loss_tol:
            what = "ln 2" if abs(expected - LN2) < 1e-6 else "its value at policy == reference"
            return (f"reference mismatch: the first step's loss is {loss:.4f}, not {expected:.4f} ({what}) as it must "
                    f"be while the policy still is the reference - {hint} "
                    f"[--health_first_loss_tol {th.health_first_loss_tol:g}]")
    if not first.get("ref_pairs"):
        return None
    drift = first["chosen_drift_tok"] / first["ref_pairs"]
    if drift <= th.health_first_drift:
        return None
    return (f"reference mismatch: at the first step the policy is already {drift:.4f} nats/token from the reference "
            f"on chosen answers, not 0 - {hint} [--health_first_drift {th.health_first_drift:g}]")


# the checks run at every log interval, by the name of their `health/<name>` scalar
TREND_CHECKS: dict[str, Callable] = {
    "displacement": displacement,
    "saturation": saturation,
    "length_exploitation": length_exploitation,
}
