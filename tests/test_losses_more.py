"""bco_pair (with its running mean), sigmoid_norm, aot / aot_unpaired and the f-divergences against their
formulas evaluated here in plain `math`, their gradient signs, the settings that do not apply, and the
settings validated once."""

from __future__ import annotations

import math

import pytest
import torch

from minidpo.losses import RunningRewardMean, check_loss_settings, preference_loss
from minidpo.losses.settings import loss_terms

# four pairs whose sorted margins pair up differently from the pairs themselves
PC, PR = [-10.0, -20.0, -3.5, -7.0], [-12.0, -15.0, -9.0, -6.0]
RC, RR = [-11.0, -18.0, -4.0, -9.0], [-11.0, -16.0, -8.0, -4.5]
LC, LR = [4, 5, 2, 7], [6, 5, 3, 2]


def ls(x):
    """log sigmoid(x), without overflow at either end."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x):
    return math.exp(ls(x))


def t(values):
    return torch.tensor(values, dtype=torch.float32)


def logistic(z, eps=0.0):
    return -(1 - eps) * ls(z) - eps * ls(-z)


def f(r, kind, alpha=0.5):
    """f'(e^r) less its constant, as in Wang et al. 2023's Table 1."""
    return {"reverse_kl": r, "forward_kl": -math.exp(-r), "js_divergence": math.log(2 * math.exp(r) / (1 + math.exp(r)))
            - math.log(2), "alpha_divergence": (1 - math.exp(-alpha * r)) / alpha - 1 / alpha}[kind]


def run(loss_type, pc=PC, pr=PR, rc=RC, rr=RR, lc=LC, lr=LR, **kw):
    return preference_loss(pc if torch.is_tensor(pc) else t(pc), pr if torch.is_tensor(pr) else t(pr), t(rc), t(rr),
                           chosen_lengths=t(lc), rejected_lengths=t(lr), loss_type=loss_type, **kw)


def grads(loss_type, **kw):
    pc, pr = t(PC).requires_grad_(), t(PR).requires_grad_()
    run(loss_type, pc=pc, pr=pr, **kw)[0].sum().backward()
    return pc.grad.tolist(), pr.grad.tolist()


# --- bco_pair -------------------------------------------------------------------------------------

def test_bco_pair_with_a_fixed_delta_and_its_gradient():
    beta, delta = 0.5, 0.2
    losses, _, _ = run("bco_pair", beta=beta, bco_delta=delta)
    a, b = [c - r for c, r in zip(PC, RC)], [c - r for c, r in zip(PR, RR)]
    assert losses.tolist() == pytest.approx([-ls(beta * x - delta) - ls(-(beta * y - delta)) for x, y in zip(a, b)],
                                            rel=1e-6)
    dc, dr = grads("bco_pair", beta=beta, bco_delta=delta)
    assert dc == pytest.approx([-beta * sig(-(beta * x - delta)) for x in a], rel=1e-5)  # < 0: chosen up lowers it
    assert dr == pytest.approx([beta * sig(beta * y - delta) for y in b], rel=1e-5)  # > 0: rejected up costs
    assert all(g < 0 for g in dc) and all(g > 0 for g in dr)


def test_running_reward_mean_is_the_mean_of_each_update_s_mean_as_trl():
    running = RunningRewardMean()
    assert running.value.item() == 0.0
    batches = [[1.0, 2.0, 3.0, 6.0], [-1.0, 0.0], [10.0]]  # means 3, -0.5, 10: each counts once
    seen = []
    for rewards in batches:
        seen.append(running.update(t(rewards)).item())
    assert seen == pytest.approx([3.0, (3.0 - 0.5) / 2, (3.0 - 0.5 + 10.0) / 3])
    # a non-finite micro-batch (a skipped step) is not counted
    assert running.update(t([float("nan"), 1.0])).item() == pytest.approx(12.5 / 3)
    assert running.state_dict() == {"mean": pytest.approx(12.5 / 3), "count": 3}
    restored = RunningRewardMean()
    restored.load_state_dict(running.state_dict())
    assert restored.update(t([0.5])).item() == pytest.approx(13.0 / 4)
    restored.load_state_dict(None)
    assert restored.state_dict() == {"mean": 0.0, "count": 0}
    # reduce gives the mean over ranks: here it doubles, as if the other rank's mean were 3x this one's
    doubled = RunningRewardMean(reduce=lambda m: 2 * m)
    assert doubled.update(t([1.0, 2.0])).item() == pytest.approx(3.0)


def test_bco_pair_updates_the_running_mean_with_this_micro_batch_first():
    beta = 0.5
    running = RunningRewardMean()
    a, b = [c - r for c, r in zip(PC, RC)], [c - r for c, r in zip(PR, RR)]
    first = sum(beta * x for x in a + b) / 8  # TRL: the mean of cat(chosen_rewards, rejected_rewards)
    losses, chosen, rejected = run("bco_pair", beta=beta, bco_delta=running)
    assert running.value.item() == pytest.approx(first, rel=1e-6)
    assert losses.tolist() == pytest.approx([-ls(beta * x - first) - ls(-(beta * y - first)) for x, y in zip(a, b)],
                                            rel=1e-5)
    assert chosen.tolist() == pytest.approx([beta * x for x in a])  # DPO's rewards
    # a second micro-batch (the policy moved): the mean of the two micro-batch means
    pc2 = [p + 1.0 for p in PC]
    second = sum(beta * x for x in [x + 1.0 for x in a] + b) / 8
    losses2, _, _ = run("bco_pair", pc=pc2, beta=beta, bco_delta=running)
    delta = (first + second) / 2
    assert running.value.item() == pytest.approx(delta, rel=1e-6)
    assert losses2.tolist() == pytest.approx([-ls(beta * (x + 1) - delta) - ls(-(beta * y - delta))
                                              for x, y in zip(a, b)], rel=1e-5)
    # evaluation: use the mean, leave it alone
    run("bco_pair", beta=beta, bco_delta=running.value)
    assert running.state_dict()["count"] == 2
    # delta is a constant of the step: the gradient is the fixed-delta one
    pc = t(pc2).requires_grad_()
    held = RunningRewardMean()
    held.load_state_dict(running.state_dict())
    run("bco_pair", pc=pc, beta=beta, bco_delta=held)[0].sum().backward()
    third = held.value.item()
    assert pc.grad.tolist() == pytest.approx([-beta * sig(-(beta * (x + 1) - third)) for x in a], rel=1e-5)


# --- sigmoid_norm ---------------------------------------------------------------------------------

def test_sigmoid_norm_is_dpo_on_per_token_log_ratios():
    beta = 2.0
    losses, chosen, _ = run("sigmoid_norm", beta=beta)
    expected = [-ls(beta * ((c - rc) / lc - (r - rr) / lr)) for c, r, rc, rr, lc, lr in zip(PC, PR, RC, RR, LC, LR)]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert chosen.tolist() == pytest.approx([beta * (c - r) for c, r in zip(PC, RC)])  # rewards: raw log-ratios
    # lengths of 1 (log-probs already per-token means): plain DPO
    ones = [1] * 4
    assert run("sigmoid_norm", lc=ones, lr=ones, beta=beta)[0].tolist() == pytest.approx(
        run("sigmoid", lc=ones, lr=ones, beta=beta)[0].tolist(), rel=1e-6)
    # the same per-token log-ratios at 2 and 200 tokens: the same loss
    long, _, _ = run("sigmoid_norm", pc=[-2.0, -200.0], pr=[-4.0, -400.0], rc=[-3.0, -300.0], rr=[-3.0, -300.0],
                     lc=[2, 200], lr=[2, 200], beta=beta)
    assert long.tolist() == pytest.approx([-ls(beta * 1.0)] * 2, rel=1e-6)
    dc, dr = grads("sigmoid_norm", beta=beta)
    assert dc == pytest.approx([-beta / lc * sig(-beta * ((c - rc) / lc - (r - rr) / lr))
                                for c, r, rc, rr, lc, lr in zip(PC, PR, RC, RR, LC, LR)], rel=1e-5)
    assert all(g < 0 for g in dc) and all(g > 0 for g in dr)


# --- aot, aot_unpaired ----------------------------------------------------------------------------

@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_aot_pairs_the_sorted_margins(eps):
    beta = 0.5
    policy = sorted(c - r for c, r in zip(PC, PR))
    reference = sorted(c - r for c, r in zip(RC, RR))
    losses, _, _ = run("aot", beta=beta, label_smoothing=eps)
    assert losses.tolist() == pytest.approx([logistic(beta * (p - q), eps) for p, q in zip(policy, reference)],
                                            rel=1e-6)
    chosen = sorted(c - r for c, r in zip(PC, RC))
    rejected = sorted(c - r for c, r in zip(PR, RR))
    unpaired, _, _ = run("aot_unpaired", beta=beta, label_smoothing=eps)
    assert unpaired.tolist() == pytest.approx([logistic(beta * (p - q), eps) for p, q in zip(chosen, rejected)],
                                              rel=1e-6)
    # these data pair up differently once sorted: neither is DPO on the batch
    assert sorted(losses.tolist()) != pytest.approx(sorted(run("sigmoid", beta=beta, label_smoothing=eps)[0].tolist()))


def test_aot_depends_on_the_batch_not_its_order_and_is_dpo_for_one_pair():
    order = [2, 0, 3, 1]
    shuffled = [[v[i] for i in order] for v in (PC, PR, RC, RR, LC, LR)]
    for name in ("aot", "aot_unpaired"):
        assert run(name, *shuffled, beta=0.5)[0].tolist() == pytest.approx(run(name, beta=0.5)[0].tolist())
        one = run(name, pc=PC[:1], pr=PR[:1], rc=RC[:1], rr=RR[:1], lc=LC[:1], lr=LR[:1], beta=0.5)[0]
        assert one.tolist() == pytest.approx(run("sigmoid", pc=PC[:1], pr=PR[:1], rc=RC[:1], rr=RR[:1], lc=LC[:1],
                                                 lr=LR[:1], beta=0.5)[0].tolist())


@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
def test_aot_gradient_signs(name):
    beta, eps = 0.5, 0.1
    dc, dr = grads(name, beta=beta, label_smoothing=eps)
    assert all(g < 0 for g in dc) and all(g > 0 for g in dr)
    # each chosen answer's gradient is the logistic slope at the sorted position its margin landed in
    if name == "aot":
        first, second = [c - r for c, r in zip(PC, PR)], [c - r for c, r in zip(RC, RR)]
    else:
        first, second = [c - r for c, r in zip(PC, RC)], [c - r for c, r in zip(PR, RR)]
    rank = {i: k for k, i in enumerate(sorted(range(4), key=lambda j: first[j]))}
    z = [beta * (p - q) for p, q in zip(sorted(first), sorted(second))]
    slope = [-(1 - eps) * sig(-zk) + eps * sig(zk) for zk in z]  # d logistic(z, eps) / dz
    assert dc == pytest.approx([beta * slope[rank[i]] for i in range(4)], rel=1e-5)


# --- f-divergences --------------------------------------------------------------------------------

F_CASES = [("reverse_kl", 0.5), ("forward_kl", 0.5), ("js_divergence", 0.5), ("alpha_divergence", 0.3),
           ("alpha_divergence", 0.5), ("alpha_divergence", 0.9)]


@pytest.mark.parametrize("kind, alpha", F_CASES)
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_sigmoid_with_an_f_divergence(kind, alpha, eps):
    beta = 0.5
    losses, chosen, _ = run("sigmoid", beta=beta, label_smoothing=eps, f_divergence_type=kind,
                            f_alpha_divergence_coef=alpha)
    expected = [logistic(beta * (f(c - rc, kind, alpha) - f(r - rr, kind, alpha)), eps)
                for c, r, rc, rr in zip(PC, PR, RC, RR)]
    assert losses.tolist() == pytest.approx(expected, rel=1e-5)
    assert chosen.tolist() == pytest.approx([beta * (c - r) for c, r in zip(PC, RC)])  # rewards: raw log-ratios
    dc, dr = grads("sigmoid", beta=beta, label_smoothing=eps, f_divergence_type=kind, f_alpha_divergence_coef=alpha)
    assert all(g < 0 for g in dc) and all(g > 0 for g in dr)


@pytest.mark.parametrize("kind, alpha", F_CASES)
def test_sigmoid_norm_with_an_f_divergence(kind, alpha):
    beta = 2.0
    losses, _, _ = run("sigmoid_norm", beta=beta, f_divergence_type=kind, f_alpha_divergence_coef=alpha)
    expected = [-ls(beta * (f(c - rc, kind, alpha) / lc - f(r - rr, kind, alpha) / lr))
                for c, r, rc, rr, lc, lr in zip(PC, PR, RC, RR, LC, LR)]
    assert losses.tolist() == pytest.approx(expected, rel=1e-5)
    dc, dr = grads("sigmoid_norm", beta=beta, f_divergence_type=kind, f_alpha_divergence_coef=alpha)
    assert all(g < 0 for g in dc) and all(g > 0 for g in dr)


def test_alpha_divergence_limits_are_reverse_and_forward_kl():
    near = {kind: run("sigmoid", beta=0.5, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=alpha)[0]
            for kind, alpha in (("reverse_kl", 1e-4), ("forward_kl", 1 - 1e-4))}
    for kind, losses in near.items():
        assert losses.tolist() == pytest.approx(run("sigmoid", beta=0.5, f_divergence_type=kind)[0].tolist(), rel=1e-3)
    # JS at log-ratios near 0 is half of DPO's slope: log sigmoid(r) ~ r / 2 - log 2
    small = [x * 1e-3 for x in PC], [x * 1e-3 for x in PR], [0.0] * 4, [0.0] * 4
    js = run("sigmoid", *small, beta=2.0, f_divergence_type="js_divergence")[0]
    assert js.tolist() == pytest.approx(run("sigmoid", *small, beta=1.0)[0].tolist(), rel=1e-4)


@pytest.mark.parametrize("kind", ["forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize("margin", [1e4, -1e4])
def test_f_divergences_stay_finite_at_extreme_log_ratios(kind, margin):
    pc, pr = t([-5.0 + min(margin, 0.0)] * 2).requires_grad_(), t([-5.0 - max(margin, 0.0)] * 2).requires_grad_()
    losses, _, _ = preference_loss(pc, pr, t([-5.0] * 2), t([-5.0] * 2), beta=0.5, f_divergence_type=kind)
    losses.sum().backward()
    for x in (losses, pc.grad, pr.grad):
        assert torch.isfinite(x).all(), (kind, margin, x)


# --- settings -------------------------------------------------------------------------------------

def _escape(text):
    return "".join("\\" + c if c in "[]().*+?" else c for c in text)


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss_type="sigmoid", f_divergence_type="kl"), "unknown f_divergence_type 'kl': choose one of reverse_kl, "
                                                        "forward_kl, js_divergence, alpha_divergence"),
    (dict(loss_type="hinge", f_divergence_type="js_divergence"),
     "f_divergence_type js_divergence only applies to loss_type sigmoid, sigmoid_norm, not 'hinge'"),
    (dict(loss_type="sigmoid,apo_down", f_divergence_type="forward_kl"), "not 'apo_down'"),
    (dict(loss_type="aot", f_divergence_type="forward_kl"), "not 'aot'"),
    (dict(loss_type="sigmoid", f_alpha_divergence_coef=0.3),
     "f_alpha_divergence_coef only applies to f_divergence_type alpha_divergence, not reverse_kl"),
    (dict(loss_type="sigmoid", f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.0),
     "f_alpha_divergence_coef must be in (0, 1), got 1.0 (0: reverse_kl, 1: forward_kl)"),
    (dict(loss_type="sigmoid", f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.0), "must be in (0, 1)"),
    (dict(loss_type="bco_pair", label_smoothing=0.1), "label_smoothing only applies to loss_type sigmoid, robust, "
                                                      "exo_pair, aot, aot_unpaired, not 'bco_pair'"),
    (dict(loss_type="sigmoid_norm", label_smoothing=0.1), "not 'sigmoid_norm'"),
])
def test_settings_that_do_not_apply_are_one_line_errors(kwargs, message):
    loss_type = kwargs.pop("loss_type")
    for check in (lambda: check_loss_settings(loss_type, 0.1, **kwargs),
                  lambda: run(loss_type, beta=0.1, bco_delta=0.0 if "bco_pair" in loss_type else None, **kwargs)):
        with pytest.raises(ValueError, match=_escape(message)) as info:
            check()
        assert "\n" not in str(info.value)


def test_missing_and_misplaced_inputs_are_named():
    with pytest.raises(ValueError, match="loss_type 'bco_pair' needs bco_delta: a RunningRewardMean"):
        run("bco_pair", beta=0.1)
    with pytest.raises(ValueError, match="bco_delta only applies to loss_type bco_pair, not sigmoid,sft"):
        run("sigmoid,sft", beta=0.1, bco_delta=RunningRewardMean())
    with pytest.raises(ValueError, match="loss_type 'sigmoid_norm' needs rejected_lengths"):
        preference_loss(t(PC), t(PR), t(RC), t(RR), beta=0.1, loss_type="sigmoid_norm", chosen_lengths=t(LC))
    # a mix with bco_pair: its delta, and the sft term's lengths
    mixed, _, _ = run("bco_pair,sft", beta=0.5, bco_delta=0.1, loss_weights=[1.0, 0.5])
    assert mixed.tolist() == pytest.approx((run("bco_pair", beta=0.5, bco_delta=0.1)[0]
                                            + 0.5 * t([-c / n for c, n in zip(PC, LC)])).tolist(), rel=1e-6)


def test_settings_are_validated_once_per_distinct_settings():
    loss_terms.cache_clear()
    for loss_type in (["sigmoid", "sft"], ("sigmoid", "sft"), ["sigmoid", "sft"]):
        run(loss_type, beta=0.1, loss_weights=[1.0, 0.5])
    info = loss_terms.cache_info()
    assert (info.misses, info.hits) == (1, 2)  # a list and a tuple are the same settings
    assert check_loss_settings(["sigmoid", "sft"], 0.1, loss_weights=[1.0, 0.5]) == [("sigmoid", 1.0), ("sft", 0.5)]
    assert loss_terms.cache_info().hits == 3
    run("sigmoid", beta=0.2)  # other settings: validated
    assert loss_terms.cache_info().misses == 2
    for _ in range(2):  # a bad setting is never cached: it raises every time
        with pytest.raises(ValueError, match="beta must be > 0"):
            run("sigmoid", beta=0.0)
