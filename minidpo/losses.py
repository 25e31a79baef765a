"""The preference-loss family. Pure tensor math: knows nothing of models, data or DeepSpeed.

All inputs are per-pair log-probabilities of a response given its prompt, already reduced over the
response tokens (a sum for DPO, see `minidpo.logprobs`; the trainer passes lengths of 1 when it
reduced them to per-token means). Per pair, with s = sigmoid, eps = label_smoothing,

    a = log pi(y_w|x) - log ref(y_w|x),   b = log pi(y_l|x) - log ref(y_l|x),   h = a - b,
    m_w, m_l = the per-token means of log pi(y_w|x), log pi(y_l|x) (the sum over that answer's length),

the losses are (docs/losses.md has the papers and typical settings)

    sigmoid    -(1 - eps) log s(beta h) - eps log s(-beta h)                 DPO; eps > 0 is cDPO
    hinge      max(0, 1 - beta h)                                            SLiC
    ipo        (h' - 1 / (2 beta))^2, h' = a / len_w - b / len_l             IPO, on per-token means
    robust     (-(1 - eps) log s(beta h) + eps log s(-beta h)) / (1 - 2 eps)
    exo_pair   s(beta h) (log s(beta h) - log(1 - eps)) + s(-beta h) (log s(-beta h) - log eps), eps 1e-3 if unset
    nca_pair   -log s(beta a) - 0.5 log s(-beta a) - 0.5 log s(-beta b)
    sppo_hard  (a - 1 / (2 beta))^2 + (b + 1 / (2 beta))^2
    apo_zero   (1 - s(beta a)) + s(beta b)
    apo_down   s(beta a) + (1 - s(beta h))
    discopop   z = beta h, mix = s(z / tau): -log s(z) (1 - mix) + exp(-z) mix
    simpo      -log s(beta (m_w - m_l) - gamma)                              reference-free
    cpo        -log s(beta (log pi(y_w|x) - log pi(y_l|x))) - m_w            reference-free
    orpo       -m_w - beta log s(o), o = (m_w - m_l) - (log(1 - e^m_w) - log(1 - e^m_l))   reference-free
    sft        -m_w (the chosen answer's per-token NLL; only as a term of a mix)

A mix is a list of terms with weights, as TRL's list form (`loss_type=["sigmoid", "sft"]`,
`loss_weights=[1.0, 0.5]`): the losses are the weighted sum of the terms. `rpo_alpha` > 0 is the
shorthand for an `sft` term of weight alpha (RPO, Pang et al. 2024): it holds the chosen answer's
likelihood up while the preference term pushes the rejected one down.

The rewards are DPO's implicit ones, r_w = beta a and r_l = beta b, for every loss that uses the
reference (as TRL logs them); a mix of reference-free terms only logs its first term's, as their papers
and TRL do: beta m_w, beta m_l for SimPO and ORPO, beta log pi(y_w|x), beta log pi(y_l|x) for CPO.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "sppo_hard", "apo_zero", "apo_down",
              "discopop", "simpo", "cpo", "orpo", "sft")
REFERENCE_FREE = frozenset({"simpo", "cpo", "orpo", "sft"})
SMOOTHED = ("sigmoid", "robust", "exo_pair")  # the losses that take label_smoothing
EXO_DEFAULT_EPS = 1e-3  # EXO's eps when label_smoothing is left at 0 (the paper's value; log eps must be finite)
# the answers whose response-token counts a loss needs (for its per-token means)
NEEDS_LENGTHS = {"ipo": ("chosen", "rejected"), "simpo": ("chosen", "rejected"), "orpo": ("chosen", "rejected"),
                 "cpo": ("chosen",), "sft": ("chosen",)}
# ORPO's log(1 - p) is -inf at a per-token mean p = 0 (every token certain): means closer to 0 than this
# count as this, which bounds the odds term at log(1e6) and keeps loss and gradient finite
ORPO_MAX_MEAN_LOGP = -1e-6


def loss_names(loss_type: str | Sequence[str]) -> list[str]:
    """The terms of a loss_type: one name, a comma list ("sigmoid,sft") or a list of names."""
    names = loss_type.split(",") if isinstance(loss_type, str) else list(loss_type)
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise ValueError(f"loss_type {loss_type!r} names no loss: choose from {', '.join(LOSS_TYPES)}")
    return names


def needs_reference(loss_type: str | Sequence[str]) -> bool:
    """False when every term is reference-free (simpo, cpo, orpo, sft): no reference model is needed at all."""
    return any(name not in REFERENCE_FREE for name in loss_names(loss_type))


def _weights(loss_weights, n: int) -> list[float]:
    if loss_weights is None or (isinstance(loss_weights, str) and not loss_weights.strip()):
        return [1.0] * n
    items = loss_weights.split(",") if isinstance(loss_weights, str) else list(loss_weights)
    try:
        weights = [float(w) for w in items]
    except (TypeError, ValueError):
        raise ValueError(f"loss_weights {loss_weights!r}: expected numbers, e.g. 1.0,0.5") from None
    if len(weights) != n:
        raise ValueError(f"loss_weights {loss_weights!r}: {len(weights)} weight(s) for {n} loss_type term(s)")
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"loss_weights {loss_weights!r}: weights must be finite and >= 0")
    return weights


def check_loss_settings(loss_type: str | Sequence[str], beta: float, label_smoothing: float = 0.0,
                        rpo_alpha: float = 0.0, *, loss_weights=None, simpo_gamma: float = 0.5,
                        discopop_tau: float = 0.05) -> list[tuple[str, float]]:
    """Raise a ValueError naming the bad setting; cheap, so configs can call it before any heavy work.
    Returns the objective's terms as (name, weight), rpo_alpha's `sft` term included."""
    names = loss_names(loss_type)
    for name in names:
        if name not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {name!r}: choose one of {', '.join(LOSS_TYPES)}")
    if len(set(names)) < len(names):
        raise ValueError(f"loss_type {loss_type!r} names a loss twice")
    preference = [n for n in names if n != "sft"]
    if not preference:
        raise ValueError("loss_type 'sft' is only the NLL term of a mix: add a preference loss, e.g. sigmoid,sft")
    terms = list(zip(names, _weights(loss_weights, len(names))))
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    for name in preference:
        if label_smoothing and name not in SMOOTHED:
            raise ValueError(f"label_smoothing only applies to loss_type {', '.join(SMOOTHED)}, not {name!r}")
    if not rpo_alpha >= 0:
        raise ValueError(f"rpo_alpha must be >= 0, got {rpo_alpha}")
    if rpo_alpha and "sft" in names:
        raise ValueError("rpo_alpha is the shorthand for an 'sft' term: use one of rpo_alpha or loss_type ...,sft")
    if not (math.isfinite(simpo_gamma) and simpo_gamma >= 0):
        raise ValueError(f"simpo_gamma must be >= 0, got {simpo_gamma}")
    if not (math.isfinite(discopop_tau) and discopop_tau > 0):
        raise ValueError(f"discopop_tau must be > 0, got {discopop_tau}")
    if rpo_alpha:
        terms.append(("sft", float(rpo_alpha)))
    return terms


@dataclass
class _Pairs:
    """What the terms read: per-pair float32 tensors of shape (B,), and the settings."""

    chosen: torch.Tensor                 # log pi(y_w|x), as reduced by the caller
    rejected: torch.Tensor
    a: torch.Tensor | None               # chosen - ref chosen (None without a reference)
    b: torch.Tensor | None
    chosen_len: torch.Tensor | None      # response tokens per answer
    rejected_len: torch.Tensor | None
    beta: float
    eps: float
    gamma: float
    tau: float

    @property
    def h(self) -> torch.Tensor:
        return self.a - self.b

    @property
    def chosen_mean(self) -> torch.Tensor:
        return self.chosen / self.chosen_len

    @property
    def rejected_mean(self) -> torch.Tensor:
        return self.rejected / self.rejected_len


def _log1mexp(p: torch.Tensor) -> torch.Tensor:
    """log(1 - e^p) for p < 0, accurate at both ends (Maechler 2012); each branch sees only inputs it
    handles, so neither gives inf/NaN to the other's gradient."""
    p = p.clamp(max=ORPO_MAX_MEAN_LOGP)
    near_zero = p > -math.log(2)
    return torch.where(near_zero, torch.log(-torch.expm1(torch.where(near_zero, p, -1.0))),
                       torch.log1p(-torch.exp(torch.where(near_zero, -1.0, p))))


def _sigmoid(x: _Pairs):
    z = x.beta * x.h
    return -(1.0 - x.eps) * F.logsigmoid(z) - x.eps * F.logsigmoid(-z)


def _hinge(x: _Pairs):
    return torch.relu(1.0 - x.beta * x.h)


def _ipo(x: _Pairs):  # IPO's 1/(2 beta) target is a per-token margin (the paper's and TRL's definition)
    return (x.a / x.chosen_len - x.b / x.rejected_len - 1.0 / (2.0 * x.beta)) ** 2


def _robust(x: _Pairs):  # Chowdhury et al. 2024: unbiased under label noise eps
    z = x.beta * x.h
    return (-(1.0 - x.eps) * F.logsigmoid(z) + x.eps * F.logsigmoid(-z)) / (1.0 - 2.0 * x.eps)


def _exo_pair(x: _Pairs):  # Ji et al. 2024: KL(policy's pair distribution || the labels' (1 - eps, eps))
    z, eps = x.beta * x.h, x.eps or EXO_DEFAULT_EPS
    return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
            + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))


def _nca_pair(x: _Pairs):  # Chen et al. 2024: absolute rewards, not only their difference
    ra, rb = x.beta * x.a, x.beta * x.b
    return -F.logsigmoid(ra) - 0.5 * F.logsigmoid(-ra) - 0.5 * F.logsigmoid(-rb)


def _sppo_hard(x: _Pairs):  # Wu et al. 2024 with hard win probabilities 1 / 0
    return (x.a - 0.5 / x.beta) ** 2 + (x.b + 0.5 / x.beta) ** 2


def _apo_zero(x: _Pairs):  # D'Oosterlinck et al. 2024: chosen up, rejected down
    return (1.0 - torch.sigmoid(x.beta * x.a)) + torch.sigmoid(x.beta * x.b)


def _apo_down(x: _Pairs):  # both down, rejected more: when the chosen answers are worse than the model's own
    return torch.sigmoid(x.beta * x.a) + (1.0 - torch.sigmoid(x.beta * x.h))


def _discopop(x: _Pairs):  # Lu et al. 2024; exp(-z) * mix as one exp, finite where exp(-z) alone overflows
    z = x.beta * x.h
    return -F.logsigmoid(z) * torch.sigmoid(-z / x.tau) + torch.exp(-z + F.logsigmoid(z / x.tau))


def _simpo(x: _Pairs):  # Meng et al. 2024
    return -F.logsigmoid(x.beta * (x.chosen_mean - x.rejected_mean) - x.gamma)


def _cpo(x: _Pairs):  # Xu et al. 2024: DPO without the reference, plus the chosen answer's NLL
    return -F.logsigmoid(x.beta * (x.chosen - x.rejected)) - x.chosen_mean


def _orpo(x: _Pairs):  # Hong et al. 2024; beta is ORPO's lambda
    pw, pl = x.chosen_mean, x.rejected_mean
    log_odds = (pw - pl) - (_log1mexp(pw) - _log1mexp(pl))
    return -pw - x.beta * F.logsigmoid(log_odds)


def _sft(x: _Pairs):
    return -x.chosen_mean


TERMS: dict[str, Callable[[_Pairs], torch.Tensor]] = {
    "sigmoid": _sigmoid, "hinge": _hinge, "ipo": _ipo, "robust": _robust, "exo_pair": _exo_pair,
    "nca_pair": _nca_pair, "sppo_hard": _sppo_hard, "apo_zero": _apo_zero, "apo_down": _apo_down,
    "discopop": _discopop, "simpo": _simpo, "cpo": _cpo, "orpo": _orpo, "sft": _sft,
}


def _reference_free_rewards(name: str, x: _Pairs) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "cpo":  # TRL's CPOTrainer: beta x the summed log-prob
        return x.beta * x.chosen, x.beta * x.rejected
    return x.beta * x.chosen_mean, x.beta * x.rejected_mean  # SimPO's reward; ORPO's as TRL logs it


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    *,
    beta: float,
    loss_type: str | Sequence[str] = "sigmoid",
    label_smoothing: float = 0.0,
    rpo_alpha: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    loss_weights: str | Sequence[float] | None = None,
    simpo_gamma: float = 0.5,
    discopop_tau: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair preference loss and rewards.

    Args:
        policy_chosen_logps, policy_rejected_logps: shape (B,), log pi(y|x) of the trained model.
        ref_chosen_logps, ref_rejected_logps: shape (B,), log ref(y|x) of the frozen reference; None
            (both) for a reference-free loss (simpo, cpo, orpo).
        beta: the loss's scale: DPO's implicit-KL strength (0.1 in the DPO paper), ORPO's lambda,
            SimPO's reward scale (2.0 as a start).
        loss_type: a name of LOSS_TYPES, or several ("sigmoid,sft" or ["sigmoid", "sft"]) for a mix.
        label_smoothing: eps of sigmoid (cDPO), robust and exo_pair.
        rpo_alpha: weight of the chosen answers' per-token NLL (0: none); the same as adding "sft".
        chosen_lengths, rejected_lengths: shape (B,), response tokens of each answer, for the per-token
            means of ipo, simpo, orpo, cpo and sft (pass ones when the log-probs are already means).
        loss_weights: one weight per loss_type term (default: 1 each).
        simpo_gamma: SimPO's target reward margin. discopop_tau: DiscoPOP's temperature.

    Returns:
        (losses, chosen_rewards, rejected_rewards), each of shape (B,), computed in float32;
        `losses` holds every term of the objective (the NLL ones included), so `losses.mean()` is what
        is minimised; the rewards are detached.
    """
    terms = check_loss_settings(loss_type, beta, label_smoothing, rpo_alpha, loss_weights=loss_weights,
                                simpo_gamma=simpo_gamma, discopop_tau=discopop_tau)
    names = [name for name, _ in terms]
    with_reference = [n for n in names if n not in REFERENCE_FREE]
    given = (ref_chosen_logps is not None, ref_rejected_logps is not None)
    if with_reference and not all(given):
        raise ValueError(f"loss_type {with_reference[0]!r} needs ref_chosen_logps and ref_rejected_logps")
    if not with_reference and any(given):
        raise ValueError(f"loss_type {names[0]!r} is reference-free: pass ref_chosen_logps = ref_rejected_logps = None")
    for name in names:
        for answer, lengths in (("chosen", chosen_lengths), ("rejected", rejected_lengths)):
            if answer in NEEDS_LENGTHS.get(name, ()) and lengths is None:
                what = "rpo_alpha > 0" if name == "sft" and rpo_alpha else f"loss_type {name!r}"
                raise ValueError(f"{what} needs {answer}_lengths (response tokens per {answer} answer)")

    chosen, rejected = policy_chosen_logps.float(), policy_rejected_logps.float()
    x = _Pairs(
        chosen=chosen, rejected=rejected,
        a=chosen - ref_chosen_logps.float() if with_reference else None,
        b=rejected - ref_rejected_logps.float() if with_reference else None,
        chosen_len=None if chosen_lengths is None else chosen_lengths.to(chosen.device, torch.float32),
        rejected_len=None if rejected_lengths is None else rejected_lengths.to(chosen.device, torch.float32),
        beta=beta, eps=label_smoothing, gamma=simpo_gamma, tau=discopop_tau)
    losses = sum(weight * TERMS[name](x) for name, weight in terms)
    if with_reference:
        chosen_rewards, rejected_rewards = beta * x.a, beta * x.b
    else:
        chosen_rewards, rejected_rewards = _reference_free_rewards(names[0], x)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()
