"""The preference losses against values computed by hand."""

import math

import pytest
import torch

from minidpo.losses import LOSS_TYPES, preference_loss

# policy / reference log-probs of two pairs
PC, PR = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0])
RC, RR = torch.tensor([-11.0, -18.0]), torch.tensor([-11.0, -16.0])
# h = (pc - rc) - (pr - rr): pair 0: (1) - (-1) = 2 ; pair 1: (-2) - (1) = -3


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_sigmoid_loss_matches_hand_computation():
    losses, chosen, rejected = preference_loss(PC, PR, RC, RR, beta=0.1)
    assert losses.tolist() == pytest.approx([-log_sigmoid(0.2), -log_sigmoid(-0.3)], rel=1e-6)
    assert chosen.tolist() == pytest.approx([0.1, -0.2], rel=1e-6)
    assert rejected.tolist() == pytest.approx([-0.1, 0.1], rel=1e-6)


def test_untrained_policy_gives_ln2():
    losses, chosen, rejected = preference_loss(RC, RR, RC, RR, beta=0.5)
    assert losses.tolist() == pytest.approx([math.log(2)] * 2)
    assert chosen.abs().max() == 0 and rejected.abs().max() == 0


def test_label_smoothing_is_cdpo():
    eps = 0.2
    losses, _, _ = preference_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=eps)
    expected = [-(1 - eps) * log_sigmoid(0.1 * h) - eps * log_sigmoid(-0.1 * h) for h in (2.0, -3.0)]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)


def test_hinge_and_ipo():
    hinge, _, _ = preference_loss(PC, PR, RC, RR, beta=0.1, loss_type="hinge")
    assert hinge.tolist() == pytest.approx([1 - 0.2, 1 + 0.3])
    # IPO on per-token means: pair 0 a = 1 over 4 tokens, b = -1 over 2; pair 1 a = -2 over 5, b = 1 over 4
    ipo, _, _ = preference_loss(PC, PR, RC, RR, beta=0.1, loss_type="ipo", chosen_lengths=torch.tensor([4, 5]),
                                rejected_lengths=torch.tensor([2, 4]))
    assert ipo.tolist() == pytest.approx([(0.25 + 0.5 - 5) ** 2, (-0.4 - 0.25 - 5) ** 2])


def test_gradient_flows_to_policy_only_and_rewards_are_detached():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    losses, chosen, rejected = preference_loss(pc, pr, RC, RR, beta=0.1)
    assert not chosen.requires_grad and not rejected.requires_grad
    losses.sum().backward()
    # d/dpc [-log sigmoid(beta h)] = -beta * sigmoid(-beta h)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert pc.grad.tolist() == pytest.approx([-0.1 * sig(-0.2), -0.1 * sig(0.3)], rel=1e-5)
    assert pr.grad.tolist() == pytest.approx([0.1 * sig(-0.2), 0.1 * sig(0.3)], rel=1e-5)


def test_rpo_adds_the_chosen_per_token_nll():
    lengths = torch.tensor([4, 5])
    losses, chosen, _ = preference_loss(PC, PR, RC, RR, beta=0.1, rpo_alpha=0.5, chosen_lengths=lengths)
    # pair 0: -log sigmoid(0.2) + 0.5 * 10 / 4 ; pair 1: -log sigmoid(-0.3) + 0.5 * 20 / 5
    assert losses.tolist() == pytest.approx([-log_sigmoid(0.2) + 1.25, -log_sigmoid(-0.3) + 2.0], rel=1e-6)
    assert chosen.tolist() == pytest.approx([0.1, -0.2], rel=1e-6)  # the rewards stay DPO's
    pc = PC.clone().requires_grad_()
    preference_loss(pc, PR, RC, RR, beta=0.1, rpo_alpha=0.5, chosen_lengths=lengths)[0].sum().backward()
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert pc.grad.tolist() == pytest.approx([-0.1 * sig(-0.2) - 0.5 / 4, -0.1 * sig(0.3) - 0.5 / 5], rel=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(rpo_alpha=-1.0), "rpo_alpha must be >= 0"),
    (dict(rpo_alpha=1.0), "rpo_alpha > 0 needs chosen_lengths"),
    (dict(loss_type="kto"), "unknown loss_type 'kto'"),
    (dict(beta=0.0), "beta must be > 0"),
    (dict(label_smoothing=0.5), "label_smoothing must be in [0, 0.5)"),
    (dict(loss_type="ipo", label_smoothing=0.1), "only applies to loss_type sigmoid, robust, exo_pair, not 'ipo'"),
])
def test_bad_settings_are_named(kwargs, message):
    kwargs = {"beta": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        preference_loss(PC, PR, RC, RR, **kwargs)
    assert "sigmoid" in LOSS_TYPES
