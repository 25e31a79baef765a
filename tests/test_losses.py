"""The preference losses against values computed by hand."""

import json
import math

import pytest
import torch

from minidpo.losses import LOSS_TYPES, preference_loss

# policy / reference log-probs of two pairs
PC, PR = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0])
RC, RR = torch.tensor([-11.0, -18.0]), torch.tensor([-11.0, -16.0])
# h = (pc - rc) - (pr - rr): pair 0: (1) - (-1) = 2 ; pair 1: (-2) - (1) = -3


def t(values):
    return torch.tensor(values, dtype=torch.float32)


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
    (dict(loss_type="kpo"), "unknown loss_type 'kpo'"),
    (dict(beta=0.0), "beta must be > 0"),
    (dict(label_smoothing=0.5), "label_smoothing must be in [0, 0.5)"),
    (dict(loss_type="ipo", label_smoothing=0.1),
     "only applies to loss_type sigmoid, robust, exo_pair, aot, aot_unpaired, not 'ipo'"),
])
def test_bad_settings_are_named(kwargs, message):
    kwargs = {"beta": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        preference_loss(PC, PR, RC, RR, **kwargs)
    assert "sigmoid" in LOSS_TYPES


def test_ipo_works_on_per_token_means_so_beta_means_the_same_at_any_length():
    # the same per-token log-ratios on a 2-token and a 200-token answer pair give the same IPO loss
    losses, _, _ = preference_loss(t([-2.0, -200.0]), t([-4.0, -400.0]), t([-3.0, -300.0]), t([-3.0, -300.0]),
                                   beta=0.1, loss_type="ipo", chosen_lengths=t([2, 200]),
                                   rejected_lengths=t([2, 200]))
    assert losses.tolist() == pytest.approx([(0.5 + 0.5 - 5.0) ** 2] * 2)
    # with pre-averaged log-probs (logps_reduction mean) the trainer passes lengths of 1: the same number
    mean, _, _ = preference_loss(t([-1.0]), t([-2.0]), t([-1.5]), t([-1.5]), beta=0.1, loss_type="ipo",
                                 chosen_lengths=t([1]), rejected_lengths=t([1]))
    assert mean.tolist() == pytest.approx([(1.0 - 5.0) ** 2])


def test_response_lengths_are_what_the_log_probs_sum_over(tmp_path, tiny_model_dir):
    from minidpo.data import collate_pairs, load_preference_data
    from minidpo.data.collate import CHOSEN, REJECTED, collate_packed
    from minidpo.models import load_tokenizer
    from minidpo.train import response_lengths

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": "yes " * (i + 1), "rejected": "no, " * (3 - i)})
                            + "\n" for i in range(3)))
    tok = load_tokenizer(tiny_model_dir)
    pairs = list(load_preference_data(str(path), tok, max_length=64, cache_dir=None, log=None))
    chosen, rejected = response_lengths(pairs, "sum", "cpu")
    plain = collate_pairs(pairs, tok.pad_token_id)["loss_mask"][:, 1:].sum(1)  # the positions sequence_logprobs sums
    packed = collate_packed(pairs, tok.pad_token_id)["segment_ids"]
    assert chosen.tolist() == plain[:3].tolist() == (packed == CHOSEN).sum(1).tolist()
    assert rejected.tolist() == plain[3:].tolist() == (packed == REJECTED).sum(1).tolist()
    assert chosen.tolist() != rejected.tolist()
    assert [x.tolist() for x in response_lengths(pairs, "mean", "cpu")] == [[1.0] * 3] * 2
