"""LD-DPO (`ld_alpha`) and WPO (`use_weighting`): the per-answer log-probs and pair weights of a real model
against values computed here in plain `math` from its per-token probabilities (float64), on both the
shared-prompt (packed) and the two-sequence path; the weighted loss and its gradient; the settings that do
not apply; a DeepSpeed run in which ld_alpha = 1 is plain DPO exactly."""

from __future__ import annotations

import math
import os

import pytest
import torch

from minidpo.config import RunConfig, validate
from minidpo.errors import ConfigError
from minidpo.logprobs import answer_logps, pair_logps
from minidpo.losses import check_loss_settings, preference_loss
from test_training import losses, pairs_file, run  # noqa: F401 (pairs_file: fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [("What is 2 + 3?", "2 + 3 = 5.", "2 + 3 = 6. 2 + 3 = 6. 2 + 3 = 6."),
           ("Name a colour.", "Blue, like the sky on a clear summer day.", "Red."),
           ("Say hi.", "Hi!", "Hello!"),
           ("What is 7 + 1?", "7 + 1 = 8.", "7 + 1 = 9.")]


def t(values):
    return torch.tensor(values, dtype=torch.float32)


def ls(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """The tiny Llama (fp32, eval), its pairs (answers of different lengths), and each answer's per-token
    log p(token) and log sum_v p_v^2, from a float64 softmax of the full logits of its own sequence."""
    import json

    from minidpo.data import collate_pairs, load_preference_data
    from minidpo.models import load_causal_lm, load_tokenizer

    path = tmp_path_factory.mktemp("ldwpo") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PROMPTS))
    tok = load_tokenizer(tiny_model_dir)
    pairs = load_preference_data(str(path), tok, max_length=96, cache_dir=None, log=None)
    pairs = [pairs[i] for i in range(len(pairs))]
    model = load_causal_lm(tiny_model_dir, trainable=False).eval()
    plain = collate_pairs(pairs, tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]).logits.double()
    logp = torch.log_softmax(logits[:, :-1], -1)
    picked = logp.gather(-1, plain["input_ids"][:, 1:, None])[..., 0]
    square = torch.logsumexp(2 * logp, -1)  # log sum_v p_v^2
    mask = plain["loss_mask"][:, 1:].bool()
    tokens = [(picked[n][mask[n]].tolist(), square[n][mask[n]].tolist()) for n in range(len(mask))]
    B = len(pairs)
    answers = [(tokens[i], tokens[B + i]) for i in range(B)]  # per pair: (chosen, rejected), each (logps, squares)
    assert any(len(c[0]) != len(r[0]) for c, r in answers) and any(len(c[0]) > len(r[0]) for c, r in answers)
    return model, pairs, tok.pad_token_id, answers


def batches(pairs, pad):
    from minidpo.data import collate_pairs
    from minidpo.data.collate import collate_packed

    return {"packed": collate_packed(pairs, pad), "two sequences": collate_pairs(pairs, pad)}


def ld_sum(logps, other_len, alpha):
    shared = min(len(logps), other_len)
    return math.fsum(logps[:shared]) + alpha * math.fsum(logps[shared:])


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_ld_log_probs_on_both_paths(setup, alpha):
    model, pairs, pad, answers = setup
    expected_c = [ld_sum(c[0], len(r[0]), alpha) for c, r in answers]
    expected_r = [ld_sum(r[0], len(c[0]), alpha) for c, r in answers]
    for name, batch in batches(pairs, pad).items():
        with torch.no_grad():
            chosen, rejected, _ = pair_logps(model, batch, "sum", ld_alpha=alpha)
            plain_c, plain_r, _ = pair_logps(model, batch, "sum")
        assert chosen.tolist() == pytest.approx(expected_c, rel=1e-5, abs=1e-4), name
        assert rejected.tolist() == pytest.approx(expected_r, rel=1e-5, abs=1e-4), name
        if alpha == 1.0:  # the plain sums, bit for bit
            assert torch.equal(chosen, plain_c) and torch.equal(rejected, plain_r), name
        else:  # the longer answer of each unequal pair scores higher (its tail counts alpha < 1 times)
            for i, (c, r) in enumerate(answers):
                longer = (chosen, plain_c) if len(c[0]) > len(r[0]) else (rejected, plain_r)
                if len(c[0]) != len(r[0]):
                    assert longer[0][i] > longer[1][i] + 1e-3
                else:
                    assert chosen[i] == pytest.approx(plain_c[i].item(), abs=1e-5)


def test_ld_alpha_zero_is_truncation_at_the_shorter_length(setup):
    model, pairs, pad, answers = setup
    with torch.no_grad():
        chosen, rejected, _ = pair_logps(model, batches(pairs, pad)["packed"], "sum", ld_alpha=0.0)
    shared = [min(len(c[0]), len(r[0])) for c, r in answers]
    assert chosen.tolist() == pytest.approx([math.fsum(c[0][:n]) for (c, _), n in zip(answers, shared)], abs=1e-4)
    assert rejected.tolist() == pytest.approx([math.fsum(r[0][:n]) for (_, r), n in zip(answers, shared)], abs=1e-4)


def test_ld_gradient_is_one_on_the_shared_length_and_alpha_past_it():
    alpha = 0.25
    per_token = torch.tensor([[-1.0, -2.0, -3.0, -4.0, 0.0], [-1.5, -2.5, -3.5, -4.5, -5.5]], requires_grad=True)
    # packed-style rows: pair 0 has 3 chosen tokens and 1 rejected (l_p = 1), pair 1 has 2 and 3 (l_p = 2)
    chosen_mask = t([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    rejected_mask = t([[1, 0, 0, 0, 0], [0, 0, 1, 1, 1]])
    chosen, rejected = answer_logps((per_token, chosen_mask, None), (per_token, rejected_mask, None), "sum",
                                    ld_alpha=alpha)
    assert chosen.tolist() == pytest.approx([-2.0 + alpha * (-3.0 - 4.0), -1.5 - 2.5])
    assert rejected.tolist() == pytest.approx([-1.0, -3.5 - 4.5 + alpha * -5.5])
    chosen.sum().backward()
    assert per_token.grad.tolist() == [[0.0, 1.0, alpha, alpha, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="ld_alpha needs the summed log-probs"):
        answer_logps((per_token, chosen_mask, None), (per_token, rejected_mask, None), "mean", ld_alpha=0.5)


def test_wpo_weights_on_both_paths(setup):
    model, pairs, pad, answers = setup

    def mean_adjusted(logps, squares):
        return math.fsum(lp - sq for lp, sq in zip(logps, squares)) / len(logps)
    expected = [min(1.0, math.exp(mean_adjusted(*c) + mean_adjusted(*r))) for c, r in answers]
    assert 0 < min(expected) < 0.95 and max(expected) == 1.0  # this model: weights below 1, and one clamped
    for name, batch in batches(pairs, pad).items():
        out = pair_logps(model, batch, "sum", weights=True)
        plain = pair_logps(model, batch, "sum")
        assert len(out) == 4 and torch.equal(out[0], plain[0]) and torch.equal(out[1], plain[1]), name
        assert out[3].tolist() == pytest.approx(expected, rel=1e-5), name
        assert not out[3].requires_grad and out[0].requires_grad, name  # the weights are detached


def test_wpo_weights_are_clamped_at_one():
    # one-token answers whose token is twice as likely as the collision probability: each mean is log 2
    per_token, squares, mask = t([[math.log(0.5)]]), t([[math.log(0.25)]]), t([[1.0]])
    _, _, weights = answer_logps((per_token, mask, squares), (per_token, mask, squares), "sum", weights=True)
    assert weights.tolist() == [1.0]  # exp(2 log 2) = 4, clamped


def test_weighted_loss_and_its_gradient():
    beta, weights = 0.5, [0.2, 0.9, 0.05]
    pc, pr, rc, rr = [-10.0, -7.0, -3.0], [-12.0, -6.0, -9.0], [-11.0, -7.5, -4.0], [-11.0, -6.5, -8.0]
    policy_c, policy_r = t(pc).requires_grad_(), t(pr).requires_grad_()
    w = t(weights).requires_grad_()
    losses, chosen_rewards, _ = preference_loss(policy_c, policy_r, t(rc), t(rr), beta=beta, pair_weights=w)
    h = [(c - a) - (r - b) for c, r, a, b in zip(pc, pr, rc, rr)]
    assert losses.tolist() == pytest.approx([-wi * ls(beta * hi) for wi, hi in zip(weights, h)], rel=1e-6)
    assert chosen_rewards.tolist() == pytest.approx([beta * (c - a) for c, a in zip(pc, rc)])  # unweighted
    losses.sum().backward()
    slope = [beta * math.exp(ls(-beta * hi)) for hi in h]  # -d/dh log s(beta h)
    assert policy_c.grad.tolist() == pytest.approx([-wi * s for wi, s in zip(weights, slope)], rel=1e-5)
    assert policy_r.grad.tolist() == pytest.approx([wi * s for wi, s in zip(weights, slope)], rel=1e-5)
    assert w.grad is None  # detached: the weights are constants of the step
    # the whole objective is weighted, the NLL term of rpo_alpha included (TRL's order)
    lengths = t([4, 5, 6])
    mixed, _, _ = preference_loss(t(pc), t(pr), t(rc), t(rr), beta=beta, rpo_alpha=0.5, chosen_lengths=lengths,
                                  rejected_lengths=lengths, pair_weights=t(weights))
    assert mixed.tolist() == pytest.approx([wi * (-ls(beta * hi) - 0.5 * c / n) for wi, hi, c, n in
                                            zip(weights, h, pc, [4, 5, 6])], rel=1e-6)
    with pytest.raises(ValueError, match="pair_weights do not apply to loss_type aot"):
        preference_loss(t(pc), t(pr), t(rc), t(rr), beta=beta, loss_type="aot", pair_weights=t(weights))


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss_type="ipo", ld_alpha=0.5), "ld_alpha only applies to loss_type sigmoid, hinge, robust, exo_pair, "
                                          "nca_pair, sppo_hard, apo_zero, apo_down, discopop, bco_pair, aot, "
                                          "aot_unpaired, not 'ipo'"),
    (dict(loss_type="simpo", ld_alpha=0.5), "not 'simpo'"),
    (dict(loss_type="sigmoid_norm", ld_alpha=0.5), "not 'sigmoid_norm'"),
    (dict(loss_type="sigmoid", rpo_alpha=0.5, ld_alpha=0.5), "not 'sft' (rpo_alpha)"),
    (dict(loss_type="sigmoid", ld_alpha=1.5), "ld_alpha must be in [0, 1] (1: plain DPO), got 1.5"),
    (dict(loss_type="sigmoid", ld_alpha=0.5, logps_reduction="mean"), "ld_alpha needs logps_reduction sum, not mean"),
    (dict(loss_type="aot_unpaired", use_weighting=True), "use_weighting does not apply to loss_type 'aot_unpaired'"),
])
def test_settings_that_do_not_apply_are_one_line_errors(tmp_path, tiny_model_dir, kwargs, message):
    escaped = "".join("\\" + c if c in "[]().*+?" else c for c in message)
    loss_type = kwargs.pop("loss_type")
    with pytest.raises(ValueError, match=escaped):
        check_loss_settings(loss_type, 0.1, **kwargs)
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    cfg = RunConfig(model=tiny_model_dir, data=str(data), output_dir=str(tmp_path / "out"), loss_type=loss_type,
                    deepspeed=os.path.join(ROOT, "ds_configs/zero2.json"), **kwargs)
    with pytest.raises(ConfigError, match=escaped) as info:
        validate(cfg)
    assert "\n" not in str(info.value)
    assert check_loss_settings("sigmoid,apo_zero", 0.1, ld_alpha=0.0, use_weighting=True) == [("sigmoid", 1.0),
                                                                                            ("apo_zero", 1.0)]


@pytest.mark.slow
def test_deepspeed_runs_ld_alpha_one_is_dpo_and_wpo_lowers_the_first_loss(tmp_path, tiny_model_dir, pairs_file):
    data = pairs_file
    common = dict(max_steps=3, dtype="fp32")
    plain = run(tmp_path, "plain", tiny_model_dir, data, **common)
    assert losses(run(tmp_path, "ld1", tiny_model_dir, data, ld_alpha=1.0, **common)) == losses(plain)
    ld = run(tmp_path, "ld", tiny_model_dir, data, ld_alpha=0.5, **common)
    assert all(math.isfinite(x) for x in losses(ld)) and losses(ld)[0] != pytest.approx(math.log(2), abs=1e-3)
    wpo = run(tmp_path, "wpo", tiny_model_dir, data, use_weighting=True, **common)
    assert 0.0 < wpo[0]["loss"] < math.log(2) - 1e-3  # policy == reference: each pair's log 2, times w < 1
    assert wpo[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
