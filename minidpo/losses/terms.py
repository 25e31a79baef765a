"""Each loss term as a function of the micro-batch's per-pair tensors (`Pairs`); the formulas, papers
and notation are in docs/losses.md and the package docstring."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minidpo.losses.settings import EXO_DEFAULT_EPS

# ORPO's log(1 - p) is -inf at a per-token mean p = 0 (every token certain): means closer to 0 than this
# count as this, which bounds the odds term at log(1e6) and keeps loss and gradient finite
ORPO_MAX_MEAN_LOGP = -1e-6
# the f-divergences' exp() of a log-ratio is capped at e^80 (~5.5e34): finite in float32, even scaled by beta
EXP_CAP = 80.0


@dataclass
class Pairs:
    """What the terms read: per-pair float32 tensors of shape (B,), and the settings."""

    chosen: torch.Tensor                 # log pi(y_w|x), as reduced by the caller
    rejected: torch.Tensor
    ref_chosen: torch.Tensor | None      # log ref(y_w|x) (None without a reference)
    ref_rejected: torch.Tensor | None
    a: torch.Tensor | None               # chosen - ref chosen
    b: torch.Tensor | None
    chosen_len: torch.Tensor | None      # response tokens per answer
    rejected_len: torch.Tensor | None
    beta: float
    eps: float
    gamma: float
    tau: float
    f_divergence: str
    f_alpha: float
    bco_delta: torch.Tensor | None = None  # bco_pair's reward shift, a 0-d tensor

    @property
    def h(self) -> torch.Tensor:
        return self.a - self.b

    @property
    def chosen_mean(self) -> torch.Tensor:
        return self.chosen / self.chosen_len

    @property
    def rejected_mean(self) -> torch.Tensor:
        return self.rejected / self.rejected_len

    def scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """f'(pi/ref) of each answer, less f's constant (it cancels in the difference): f-DPO's rewards / beta."""
        return f_score(self.a, self.f_divergence, self.f_alpha), f_score(self.b, self.f_divergence, self.f_alpha)


def f_score(r: torch.Tensor, kind: str, alpha: float) -> torch.Tensor:
    """f'(u) at u = e^r, r = log(pi / ref), up to a constant (Wang et al. 2023, Table 1)."""
    if kind == "reverse_kl":  # f'(u) = log u + 1: DPO
        return r
    if kind == "forward_kl":  # f'(u) = -1/u
        return -torch.exp((-r).clamp(max=EXP_CAP))
    if kind == "js_divergence":  # f'(u) = log(2u / (1 + u)) = log 2 + log sigmoid(r)
        return F.logsigmoid(r)
    return -torch.exp((-alpha * r).clamp(max=EXP_CAP)) / alpha  # alpha_divergence: f'(u) = (1 - u^-alpha) / alpha


def _log1mexp(p: torch.Tensor) -> torch.Tensor:
    """log(1 - e^p) for p < 0, accurate at both ends (Maechler 2012); each branch sees only inputs it
    handles, so neither gives inf/NaN to the other's gradient."""
    p = p.clamp(max=ORPO_MAX_MEAN_LOGP)
    near_zero = p > -math.log(2)
    return torch.where(near_zero, torch.log(-torch.expm1(torch.where(near_zero, p, -1.0))),
                       torch.log1p(-torch.exp(torch.where(near_zero, -1.0, p))))


def _smoothed_logistic(z: torch.Tensor, eps: float) -> torch.Tensor:
    """-(1 - eps) log s(z) - eps log s(-z): the logistic loss with labels flipped at rate eps (cDPO)."""
    return -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def _sigmoid(x: Pairs):  # DPO; with f_divergence_type, f-DPO (Wang et al. 2023)
    chosen, rejected = x.scores()
    return _smoothed_logistic(x.beta * (chosen - rejected), x.eps)


def _hinge(x: Pairs):
    return torch.relu(1.0 - x.beta * x.h)


def _ipo(x: Pairs):  # IPO's 1/(2 beta) target is a per-token margin (the paper's and TRL's definition)
    return (x.a / x.chosen_len - x.b / x.rejected_len - 1.0 / (2.0 * x.beta)) ** 2


def _robust(x: Pairs):  # Chowdhury et al. 2024: unbiased under label noise eps
    z = x.beta * x.h
    return (-(1.0 - x.eps) * F.logsigmoid(z) + x.eps * F.logsigmoid(-z)) / (1.0 - 2.0 * x.eps)


def _exo_pair(x: Pairs):  # Ji et al. 2024: KL(policy's pair distribution || the labels' (1 - eps, eps))
    z, eps = x.beta * x.h, x.eps or EXO_DEFAULT_EPS
    return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
            + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))


def _nca_pair(x: Pairs):  # Chen et al. 2024: absolute rewards, not only their difference
    ra, rb = x.beta * x.a, x.beta * x.b
    return -F.logsigmoid(ra) - 0.5 * F.logsigmoid(-ra) - 0.5 * F.logsigmoid(-rb)


def _sppo_hard(x: Pairs):  # Wu et al. 2024 with hard win probabilities 1 / 0
    return (x.a - 0.5 / x.beta) ** 2 + (x.b + 0.5 / x.beta) ** 2


def _apo_zero(x: Pairs):  # D'Oosterlinck et al. 2024: chosen up, rejected down
    return (1.0 - torch.sigmoid(x.beta * x.a)) + torch.sigmoid(x.beta * x.b)


def _apo_down(x: Pairs):  # both down, rejected more (the paper's Eq. 8 + 1; docs/losses.md on TRL PR #6593)
    return torch.sigmoid(x.beta * x.a) + (1.0 - torch.sigmoid(x.beta * x.h))


def _discopop(x: Pairs):  # Lu et al. 2024; exp(-z) * mix as one exp, finite where exp(-z) alone overflows
    z = x.beta * x.h
    return -F.logsigmoid(z) * torch.sigmoid(-z / x.tau) + torch.exp(-z + F.logsigmoid(z / x.tau))


def _bco_pair(x: Pairs):  # Jung et al. 2024: each reward classified against the running mean reward delta
    return -F.logsigmoid(x.beta * x.a - x.bco_delta) - F.logsigmoid(-(x.beta * x.b - x.bco_delta))


def _sigmoid_norm(x: Pairs):  # DPO on per-token log-ratios (TRL's sigmoid_norm); f-divergence scores too
    chosen, rejected = x.scores()
    return -F.logsigmoid(x.beta * (chosen / x.chosen_len - rejected / x.rejected_len))


def _aot(x: Pairs):  # Melnyk et al. 2024, paired: the sorted policy margins dominate the sorted reference ones
    policy, _ = torch.sort(x.chosen - x.rejected)
    reference, _ = torch.sort(x.ref_chosen - x.ref_rejected)
    return _smoothed_logistic(x.beta * (policy - reference), x.eps)


def _aot_unpaired(x: Pairs):  # unpaired: the sorted chosen log-ratios dominate the sorted rejected ones
    chosen, _ = torch.sort(x.a)
    rejected, _ = torch.sort(x.b)
    return _smoothed_logistic(x.beta * (chosen - rejected), x.eps)


def _simpo(x: Pairs):  # Meng et al. 2024
    return -F.logsigmoid(x.beta * (x.chosen_mean - x.rejected_mean) - x.gamma)


def _cpo(x: Pairs):  # Xu et al. 2024: DPO without the reference, plus the chosen answer's NLL
    return -F.logsigmoid(x.beta * (x.chosen - x.rejected)) - x.chosen_mean


def _orpo(x: Pairs):  # Hong et al. 2024; beta is ORPO's lambda
    pw, pl = x.chosen_mean, x.rejected_mean
    log_odds = (pw - pl) - (_log1mexp(pw) - _log1mexp(pl))
    return -pw - x.beta * F.logsigmoid(log_odds)


def _sft(x: Pairs):
    return -x.chosen_mean


TERMS: dict[str, Callable[[Pairs], torch.Tensor]] = {
    "sigmoid": _sigmoid, "hinge": _hinge, "ipo": _ipo, "robust": _robust, "exo_pair": _exo_pair,
    "nca_pair": _nca_pair, "sppo_hard": _sppo_hard, "apo_zero": _apo_zero, "apo_down": _apo_down,
    "discopop": _discopop, "bco_pair": _bco_pair, "sigmoid_norm": _sigmoid_norm, "aot": _aot,
    "aot_unpaired": _aot_unpaired, "simpo": _simpo, "cpo": _cpo, "orpo": _orpo, "sft": _sft,
}


def reference_free_rewards(name: str, x: Pairs) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "cpo":  # TRL's CPOTrainer: beta x the summed log-prob
        return x.beta * x.chosen, x.beta * x.rejected
    return x.beta * x.chosen_mean, x.beta * x.rejected_mean  # SimPO's reward; ORPO's as TRL logs it
