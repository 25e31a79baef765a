"""The loss settings: the loss names, which setting applies to which loss, and their validation.

Validation runs once per distinct set of settings: `loss_terms` is cached on the settings (lists as
tuples), so the training loop, which calls `preference_loss` on every micro-step, pays a dict lookup.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from minidpo.losses.listwise import LISTWISE_LOSSES

LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "sppo_hard", "apo_zero", "apo_down",
              "discopop", "bco_pair", "sigmoid_norm", "aot", "aot_unpaired", "simpo", "cpo", "orpo", "sft")
KTO = "kto"  # not a pairwise loss: unpaired examples, minidpo.losses.kto (preference_loss refuses it); alone, or
# with pairwise terms, which train the pairs of the same run (`split_kto`)
# nor these, trained alone: K ranked answers a row (minidpo.losses.listwise)
NOT_PAIRWISE = (KTO, *LISTWISE_LOSSES)
REFERENCE_FREE = frozenset({"simpo", "cpo", "orpo", "sft"})
SMOOTHED = ("sigmoid", "robust", "exo_pair", "aot", "aot_unpaired")  # the losses that take label_smoothing
EXO_DEFAULT_EPS = 1e-3  # EXO's eps when label_smoothing is left at 0 (the paper's value; log eps must be finite)
# the answers whose response-token counts a loss needs (for its per-token means)
NEEDS_LENGTHS = {"ipo": ("chosen", "rejected"), "sigmoid_norm": ("chosen", "rejected"),
                 "simpo": ("chosen", "rejected"), "orpo": ("chosen", "rejected"), "cpo": ("chosen",),
                 "sft": ("chosen",)}
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
F_DIVERGENCE_LOSSES = ("sigmoid", "sigmoid_norm")  # f-DPO is the Bradley-Terry (sigmoid) loss on f'(ratio)
F_ALPHA_DEFAULT = 0.5
# LD-DPO reweights summed log-probs: not the losses on per-token means, nor the NLL term (its mean needs the plain sum)
LD_LOSSES = tuple(n for n in LOSS_TYPES if n not in REFERENCE_FREE and n not in NEEDS_LENGTHS)
# their losses[i] is a quantile's term (aot) or an unpaired example's (kto), not pair i's: no per-pair weight fits
UNPAIRED = ("aot", "aot_unpaired", "kto", *LISTWISE_LOSSES)


def loss_names(loss_type: str | Sequence[str]) -> list[str]:
    """The terms of a loss_type: one name, a comma list ("sigmoid,sft") or a list of names."""
    names = loss_type.split(",") if isinstance(loss_type, str) else list(loss_type)
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise ValueError(f"loss_type {loss_type!r} names no loss: choose from {', '.join(LOSS_TYPES + NOT_PAIRWISE)}")
    return names


def split_kto(loss_type: str | Sequence[str], loss_weights=None) -> tuple[list[str], list[float], float]:
    """A loss_type with kto -> (its pairwise terms, their weights, kto's weight): a run trains its pairs
    with the first two (preference_loss) and its unpaired examples with kto_loss times the last. Checked
    settings (check_loss_settings) assumed; kto alone gives no pairwise term."""
    names = loss_names(loss_type)
    weights = dict(zip(names, _weights(loss_weights, len(names))))
    pairwise = [n for n in names if n != KTO]
    return pairwise, [weights[n] for n in pairwise], weights.get(KTO, 1.0)


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


def frozen(value):
    """A setting as a cache key: a list (from YAML or code) as a tuple; names, numbers and None as they are."""
    return value if value is None or isinstance(value, str) else tuple(value)


def check_loss_settings(loss_type: str | Sequence[str], beta: float, label_smoothing: float = 0.0,
                        rpo_alpha: float = 0.0, *, loss_weights=None, simpo_gamma: float = 0.5,
                        discopop_tau: float = 0.05, f_divergence_type: str = "reverse_kl",
                        f_alpha_divergence_coef: float = F_ALPHA_DEFAULT, ld_alpha: float | None = None,
                        use_weighting: bool = False, logps_reduction: str = "sum") -> list[tuple[str, float]]:
    """Raise a ValueError naming the bad setting; cheap, so configs can call it before any heavy work.
    Returns the objective's terms as (name, weight), rpo_alpha's `sft` term included. ld_alpha (LD-DPO) and
    use_weighting (WPO) act on the log-probs (minidpo.logprobs), so only this check reads them."""
    terms = list(loss_terms(frozen(loss_type), beta, label_smoothing, rpo_alpha, frozen(loss_weights), simpo_gamma,
                            discopop_tau, f_divergence_type, f_alpha_divergence_coef))
    _check_ld_and_weighting([name for name, _ in terms], ld_alpha, use_weighting, logps_reduction, rpo_alpha)
    return terms


def _check_ld_and_weighting(names: list[str], ld_alpha, use_weighting: bool, reduction: str, rpo_alpha) -> None:
    if ld_alpha is not None:
        if not (isinstance(ld_alpha, (int, float)) and 0.0 <= ld_alpha <= 1.0):
            raise ValueError(f"ld_alpha must be in [0, 1] (1: plain DPO), got {ld_alpha}")
        if reduction != "sum":
            raise ValueError(f"ld_alpha needs logps_reduction sum, not {reduction} (per-token means have no length "
                             "to desensitise)")
        for name in names:
            if name not in LD_LOSSES:
                what = "'sft' (rpo_alpha)" if name == "sft" and rpo_alpha else repr(name)
                raise ValueError(f"ld_alpha only applies to loss_type {', '.join(LD_LOSSES)}, not {what}")
    for name in names:
        if use_weighting and name in UNPAIRED:
            raise ValueError(f"use_weighting does not apply to loss_type {name!r}: its terms are not pairs")


@functools.lru_cache(maxsize=64)
def loss_terms(loss_type, beta, label_smoothing, rpo_alpha, loss_weights, simpo_gamma, discopop_tau,
               f_divergence_type, f_alpha_divergence_coef) -> tuple[tuple[str, float], ...]:
    """check_loss_settings on hashable settings (see `frozen`), validated once per distinct settings."""
    names = loss_names(loss_type)
    for name in names:
        if name not in LOSS_TYPES + NOT_PAIRWISE:
            raise ValueError(f"unknown loss_type {name!r}: choose one of {', '.join(LOSS_TYPES + NOT_PAIRWISE)}")
    if len(set(names)) < len(names):
        raise ValueError(f"loss_type {loss_type!r} names a loss twice")
    if KTO in names:  # its rows are single completions; the other terms train the run's pairs
        pairwise = [n for n in names if n not in (KTO, "sft")]
        if len(names) == 1 and rpo_alpha:
            raise ValueError("rpo_alpha does not apply to loss_type kto alone (unpaired examples have no pair; to "
                             "train pairs too: loss_type sigmoid,kto)")
        if len(names) > 1 and not pairwise:
            raise ValueError(f"loss_type {','.join(names)}: kto mixes with a pairwise preference loss for the run's "
                             "pairs (e.g. sigmoid,kto), not with sft alone")
    for name in set(names) & set(LISTWISE_LOSSES):
        if len(names) > 1 or rpo_alpha:  # its rows are K ranked answers, not pairs
            raise ValueError(f"loss_type {name} trains on listwise data and takes no other term (nor rpo_alpha)")
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
    _check_f_divergence(preference, f_divergence_type, f_alpha_divergence_coef)
    if rpo_alpha:
        terms.append(("sft", float(rpo_alpha)))
    return tuple(terms)


def _check_f_divergence(preference: list[str], kind: str, alpha: float) -> None:
    if kind not in F_DIVERGENCES:
        raise ValueError(f"unknown f_divergence_type {kind!r}: choose one of {', '.join(F_DIVERGENCES)}")
    if kind != "reverse_kl":
        for name in preference:
            if name not in F_DIVERGENCE_LOSSES:
                raise ValueError(f"f_divergence_type {kind} only applies to loss_type "
                                 f"{', '.join(F_DIVERGENCE_LOSSES)}, not {name!r}")
    if kind != "alpha_divergence" and alpha != F_ALPHA_DEFAULT:
        raise ValueError(f"f_alpha_divergence_coef only applies to f_divergence_type alpha_divergence, not {kind}")
    if not 0.0 < alpha < 1.0:  # Wang et al.'s range; its limits are reverse_kl (0) and forward_kl (1)
        raise ValueError(f"f_alpha_divergence_coef must be in (0, 1), got {alpha} (0: reverse_kl, 1: forward_kl)")
