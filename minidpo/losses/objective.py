"""preference_loss: the settings validated (once, cached), the inputs checked, the terms summed."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from minidpo.losses.bco import RunningRewardMean
from minidpo.losses.listwise import LISTWISE_LOSSES
from minidpo.losses.settings import F_ALPHA_DEFAULT, NEEDS_LENGTHS, REFERENCE_FREE, UNPAIRED, frozen, loss_terms
from minidpo.losses.terms import TERMS, Pairs, reference_free_rewards


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
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = F_ALPHA_DEFAULT,
    bco_delta: RunningRewardMean | torch.Tensor | float | None = None,
    pair_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair preference loss and rewards.

    Args:
        policy_chosen_logps, policy_rejected_logps: shape (B,), log pi(y|x) of the trained model.
        ref_chosen_logps, ref_rejected_logps: shape (B,), log ref(y|x) of the frozen reference; None
            (both) for a reference-free loss (simpo, cpo, orpo).
        beta: the loss's scale: DPO's implicit-KL strength (0.1 in the DPO paper), ORPO's lambda,
            SimPO's reward scale (2.0 as a start).
        loss_type: a name of LOSS_TYPES, or several ("sigmoid,sft" or ["sigmoid", "sft"]) for a mix.
        label_smoothing: eps of sigmoid (cDPO), robust, exo_pair, aot and aot_unpaired.
        rpo_alpha: weight of the chosen answers' per-token NLL (0: none); the same as adding "sft".
        chosen_lengths, rejected_lengths: shape (B,), response tokens of each answer, for the per-token
            means of ipo, sigmoid_norm, simpo, orpo, cpo and sft (pass ones when the log-probs are means).
        loss_weights: one weight per loss_type term (default: 1 each).
        simpo_gamma: SimPO's target reward margin. discopop_tau: DiscoPOP's temperature.
        f_divergence_type: reverse_kl (DPO), forward_kl, js_divergence or alpha_divergence, for sigmoid and
            sigmoid_norm; f_alpha_divergence_coef: the alpha of alpha_divergence, in (0, 1).
        bco_delta: bco_pair's reward shift (only with bco_pair, which needs it): a RunningRewardMean held
            across steps (updated here with this micro-batch's rewards, then used), or a fixed number.
        pair_weights: shape (B,), WPO's weight of each pair (`minidpo.logprobs`, weights=True): every term
            of pair i is multiplied by it, as TRL's use_weighting does; used detached (a constant of the step).

    Returns:
        (losses, chosen_rewards, rejected_rewards), each of shape (B,), computed in float32;
        `losses` holds every term of the objective (the NLL ones included), so `losses.mean()` is what
        is minimised; the rewards are detached. aot and aot_unpaired pair the micro-batch's sorted
        margins, so their part of losses[i] is the i-th smallest margin's, not pair i's.
    """
    terms = loss_terms(frozen(loss_type), beta, label_smoothing, rpo_alpha, frozen(loss_weights), simpo_gamma,
                       discopop_tau, f_divergence_type, f_alpha_divergence_coef)
    names = [name for name, _ in terms]
    if "kto" in names:
        raise ValueError("loss_type kto scores unpaired examples: use minidpo.losses.kto_loss, not preference_loss")
    if set(names) & set(LISTWISE_LOSSES):
        raise ValueError(f"loss_type {names[0]} scores K ranked answers: use minidpo.losses.listwise_loss, not "
                         "preference_loss")
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
    if "bco_pair" in names and bco_delta is None:
        raise ValueError("loss_type 'bco_pair' needs bco_delta: a RunningRewardMean held across steps, or a number")
    if "bco_pair" not in names and bco_delta is not None:
        raise ValueError(f"bco_delta only applies to loss_type bco_pair, not {','.join(names)}")
    if pair_weights is not None and any(n in UNPAIRED for n in names):
        raise ValueError(f"pair_weights do not apply to loss_type {','.join(names)}: its terms are sorted quantiles")

    chosen, rejected = policy_chosen_logps.float(), policy_rejected_logps.float()
    ref_chosen = ref_chosen_logps.float() if with_reference else None
    ref_rejected = ref_rejected_logps.float() if with_reference else None
    x = Pairs(
        chosen=chosen, rejected=rejected, ref_chosen=ref_chosen, ref_rejected=ref_rejected,
        a=chosen - ref_chosen if with_reference else None, b=rejected - ref_rejected if with_reference else None,
        chosen_len=None if chosen_lengths is None else chosen_lengths.to(chosen.device, torch.float32),
        rejected_len=None if rejected_lengths is None else rejected_lengths.to(chosen.device, torch.float32),
        beta=beta, eps=label_smoothing, gamma=simpo_gamma, tau=discopop_tau, f_divergence=f_divergence_type,
        f_alpha=f_alpha_divergence_coef)
    if with_reference:  # DPO's implicit rewards (raw log-ratios, whatever the f-divergence, as TRL logs them)
        chosen_rewards, rejected_rewards = (beta * x.a).detach(), (beta * x.b).detach()
    else:
        chosen_rewards, rejected_rewards = (r.detach() for r in reference_free_rewards(names[0], x))
    if isinstance(bco_delta, RunningRewardMean):  # TRL's order: the mean counts this micro-batch, then is used
        x.bco_delta = bco_delta.update(torch.cat([chosen_rewards, rejected_rewards]))
    elif bco_delta is not None:
        x.bco_delta = torch.as_tensor(bco_delta, dtype=torch.float32, device=chosen.device).detach()
    losses = sum(weight * TERMS[name](x) for name, weight in terms)
    if pair_weights is not None:  # WPO (Zhou et al. 2024): the weights carry no gradient
        losses = losses * pair_weights.detach().to(losses.device, torch.float32)
    return losses, chosen_rewards, rejected_rewards
