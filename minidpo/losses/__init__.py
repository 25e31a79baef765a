"""The preference-loss family. Pure tensor math: knows nothing of models, data or DeepSpeed.

All inputs are per-pair log-probabilities of a response given its prompt, already reduced over the
response tokens (a sum for DPO, see `minidpo.logprobs`; the trainer passes lengths of 1 when it
reduced them to per-token means). Per pair, with s = sigmoid, eps = label_smoothing,

    a = log pi(y_w|x) - log ref(y_w|x),   b = log pi(y_l|x) - log ref(y_l|x),   h = a - b,
    m_w, m_l = the per-token means of log pi(y_w|x), log pi(y_l|x) (the sum over that answer's length),
    L(z) = -(1 - eps) log s(z) - eps log s(-z)   (the logistic loss with labels flipped at rate eps),

the losses are (docs/losses.md has the papers and typical settings)

    sigmoid       L(beta (f(a) - f(b))), f = the identity (DPO; eps > 0 is cDPO) or f-DPO's f'   see below
    hinge         max(0, 1 - beta h)                                            SLiC
    ipo           (h' - 1 / (2 beta))^2, h' = a / len_w - b / len_l             IPO, on per-token means
    robust        (-(1 - eps) log s(beta h) + eps log s(-beta h)) / (1 - 2 eps)
    exo_pair      s(beta h) (log s(beta h) - log(1 - eps)) + s(-beta h) (log s(-beta h) - log eps), eps 1e-3 if unset
    nca_pair      -log s(beta a) - 0.5 log s(-beta a) - 0.5 log s(-beta b)
    sppo_hard     (a - 1 / (2 beta))^2 + (b + 1 / (2 beta))^2
    apo_zero      (1 - s(beta a)) + s(beta b)
    apo_down      s(beta a) + (1 - s(beta h))
    discopop      z = beta h, mix = s(z / tau): -log s(z) (1 - mix) + exp(-z) mix
    bco_pair      -log s(beta a - delta) - log s(-(beta b - delta)), delta = the running mean reward   BCO
    sigmoid_norm  -log s(beta (f(a) / len_w - f(b) / len_l))                    DPO on per-token log-ratios
    aot           L(beta (sort(log pi(y_w) - log pi(y_l))_i - sort(log ref(y_w) - log ref(y_l))_i))   AOT
    aot_unpaired  L(beta (sort(a)_i - sort(b)_i))                               over the micro-batch, sorted
    simpo         -log s(beta (m_w - m_l) - gamma)                              reference-free
    cpo           -log s(beta (log pi(y_w|x) - log pi(y_l|x))) - m_w            reference-free
    orpo          -m_w - beta log s(o), o = (m_w - m_l) - (log(1 - e^m_w) - log(1 - e^m_l))   reference-free
    sft           -m_w (the chosen answer's per-token NLL; only as a term of a mix)

kto (KTO, Ethayarajh et al. 2024) is no pairwise term: it scores unpaired examples, each a completion
labelled desirable or not (`kto_loss`, `batch_kl` in minidpo.losses.kto); preference_loss refuses it.

listwise_pairs and plackett_luce score K ranked answers of a prompt (minidpo.losses.listwise).

f_divergence_type picks f for sigmoid and sigmoid_norm (f-DPO, Wang et al. 2023; f'(u) at u = pi/ref,
less constants): reverse_kl f(r) = r (DPO), forward_kl -e^(-r), js_divergence log s(r), alpha_divergence
-e^(-alpha r) / alpha with alpha = f_alpha_divergence_coef in (0, 1).

`pair_weights` (WPO's, computed from the policy's logits by `minidpo.logprobs`) multiply every term of
each pair; LD-DPO's `ld_alpha` acts on the log-probs themselves (`minidpo.logprobs.answer_logps`), so
here it is only validated (`check_loss_settings`).

A mix is a list of terms with weights, as TRL's list form (`loss_type=["sigmoid", "sft"]`,
`loss_weights=[1.0, 0.5]`): the losses are the weighted sum of the terms. `rpo_alpha` > 0 is the
shorthand for an `sft` term of weight alpha (RPO, Pang et al. 2024): it holds the chosen answer's
likelihood up while the preference term pushes the rejected one down.

The rewards are DPO's implicit ones, r_w = beta a and r_l = beta b, for every loss that uses the
reference (as TRL logs them); a mix of reference-free terms only logs its first term's, as their papers
and TRL do: beta m_w, beta m_l for SimPO and ORPO, beta log pi(y_w|x), beta log pi(y_l|x) for CPO.
"""

from minidpo.losses.bco import RunningRewardMean
from minidpo.losses.kto import batch_kl, check_kto_settings, kto_kl_value, kto_loss
from minidpo.losses.listwise import LISTWISE_LOSSES, listwise_loss, pair_accuracy
from minidpo.losses.objective import preference_loss
from minidpo.losses.settings import (
    F_ALPHA_DEFAULT,
    F_DIVERGENCE_LOSSES,
    F_DIVERGENCES,
    LOSS_TYPES,
    REFERENCE_FREE,
    SMOOTHED,
    check_loss_settings,
    loss_names,
    needs_reference,
)

__all__ = ["F_ALPHA_DEFAULT", "F_DIVERGENCES", "F_DIVERGENCE_LOSSES", "LISTWISE_LOSSES", "LOSS_TYPES", "REFERENCE_FREE",
           "SMOOTHED", "RunningRewardMean", "batch_kl", "check_kto_settings", "check_loss_settings", "kto_kl_value",
           "kto_loss", "listwise_loss", "loss_names", "needs_reference", "pair_accuracy", "preference_loss"]
