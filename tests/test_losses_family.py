"""The preference-loss family: every loss against its formula evaluated here in plain `math`, extreme
margins, gradient signs, mixes, rewards, bad settings; and real runs of the reference-free losses."""

from __future__ import annotations

import json
import math
import os
import random

import pytest
import torch

from minidpo.config import RunConfig, parse_config, validate
from minidpo.errors import ConfigError
from minidpo.losses import LOSS_TYPES, REFERENCE_FREE, needs_reference, preference_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# three pairs: policy / reference log-probs (sums) and response lengths
PC, PR = [-10.0, -20.0, -3.5], [-12.0, -15.0, -9.0]
RC, RR = [-11.0, -18.0, -4.0], [-11.0, -16.0, -8.0]
LC, LR = [4, 5, 2], [6, 5, 3]
WITH_REFERENCE = [n for n in LOSS_TYPES if n not in REFERENCE_FREE]
PREFERENCE = [n for n in LOSS_TYPES if n != "sft"]


def ls(x):
    """log sigmoid(x), without overflow at either end."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x):
    return math.exp(ls(x))


def formula(name, pc, pr, rc, rr, lc, lr, beta, eps=0.0, gamma=0.5, tau=0.05, delta=0.0):
    """One pair's loss, straight from the issue's formulas."""
    a, b = pc - rc, pr - rr
    h = a - b
    mw, ml = pc / lc, pr / lr
    z = beta * h
    if name == "sigmoid":
        return -(1 - eps) * ls(z) - eps * ls(-z)
    if name == "hinge":
        return max(0.0, 1 - z)
    if name == "ipo":
        return ((a / lc - b / lr) - 1 / (2 * beta)) ** 2
    if name == "robust":
        return (-(1 - eps) * ls(z) + eps * ls(-z)) / (1 - 2 * eps)
    if name == "exo_pair":
        eps = eps or 1e-3
        return sig(z) * (ls(z) - math.log(1 - eps)) + sig(-z) * (ls(-z) - math.log(eps))
    if name == "nca_pair":
        return -ls(beta * a) - 0.5 * ls(-beta * a) - 0.5 * ls(-beta * b)
    if name == "sppo_hard":
        return (a - 1 / (2 * beta)) ** 2 + (b + 1 / (2 * beta)) ** 2
    if name == "apo_zero":
        return (1 - sig(beta * a)) + sig(beta * b)
    if name == "apo_down":
        return sig(beta * a) + (1 - sig(z))
    if name == "discopop":
        m = sig(z / tau)
        return -ls(z) * (1 - m) + math.exp(-z) * m
    if name == "bco_pair":
        return -ls(beta * a - delta) - ls(-(beta * b - delta))
    if name == "sigmoid_norm":
        return -ls(beta * (a / lc - b / lr))
    if name == "simpo":
        return -ls(beta * (mw - ml) - gamma)
    if name == "cpo":
        return -ls(beta * (pc - pr)) - mw
    if name == "orpo":
        o = (mw - ml) - (math.log(1 - math.exp(mw)) - math.log(1 - math.exp(ml)))
        return -mw - beta * ls(o)
    if name == "sft":
        return -mw
    raise AssertionError(name)


def batch_formula(name, beta, eps=0.0, **settings):
    """The micro-batch's losses: per pair, or for aot / aot_unpaired the sorted margins paired up."""
    if name == "aot":
        pairs = zip(sorted(c - r for c, r in zip(PC, PR)), sorted(c - r for c, r in zip(RC, RR)))
    elif name == "aot_unpaired":
        pairs = zip(sorted(c - r for c, r in zip(PC, RC)), sorted(c - r for c, r in zip(PR, RR)))
    else:
        return [formula(name, *pair, beta=beta, eps=eps, **settings) for pair in zip(PC, PR, RC, RR, LC, LR)]
    return [-(1 - eps) * ls(beta * (p - q)) - eps * ls(-beta * (p - q)) for p, q in pairs]


def t(values):
    return torch.tensor(values, dtype=torch.float32)


def call(name, pc=PC, pr=PR, rc=RC, rr=RR, lc=LC, lr=LR, **kw):
    refs = (None, None) if not needs_reference(name) else (t(rc), t(rr))
    if name == "bco_pair":
        kw.setdefault("bco_delta", 0.0)
    return preference_loss(t(pc) if not torch.is_tensor(pc) else pc, t(pr) if not torch.is_tensor(pr) else pr, *refs,
                           chosen_lengths=t(lc), rejected_lengths=t(lr), loss_type=name, **kw)


# (loss, settings) at several beta / eps / gamma / tau
CASES = [(n, dict(beta=beta)) for n in ("hinge", "ipo", "nca_pair", "sppo_hard", "apo_zero", "apo_down", "cpo", "orpo")
         for beta in (0.1, 0.5, 2.0)]
CASES += [(n, dict(beta=beta, label_smoothing=eps)) for n in ("sigmoid", "robust", "exo_pair")
          for beta in (0.1, 1.0) for eps in (0.0, 0.1, 0.3)]
CASES += [("simpo", dict(beta=beta, simpo_gamma=gamma)) for beta in (0.5, 2.0, 10.0) for gamma in (0.0, 0.5, 1.5)]
CASES += [("discopop", dict(beta=beta, discopop_tau=tau)) for beta in (0.1, 0.5, 2.0) for tau in (0.05, 0.5)]
CASES += [("bco_pair", dict(beta=beta, bco_delta=delta)) for beta in (0.1, 2.0) for delta in (0.0, 0.3, -1.0)]
CASES += [("sigmoid_norm", dict(beta=beta)) for beta in (0.1, 0.5, 2.0)]
CASES += [(n, dict(beta=beta, label_smoothing=eps)) for n in ("aot", "aot_unpaired") for beta in (0.1, 1.0)
          for eps in (0.0, 0.2)]


def test_every_loss_is_covered_by_the_cases():
    assert {n for n, _ in CASES} == set(PREFERENCE)


@pytest.mark.parametrize("name, kw", CASES, ids=[f"{n}-{'-'.join(f'{v}' for v in kw.values())}" for n, kw in CASES])
def test_loss_matches_its_formula(name, kw):
    losses, _, _ = call(name, **kw)
    settings = dict(beta=kw["beta"], eps=kw.get("label_smoothing", 0.0), gamma=kw.get("simpo_gamma", 0.5),
                    tau=kw.get("discopop_tau", 0.05), delta=kw.get("bco_delta", 0.0))
    expected = batch_formula(name, **settings)
    assert losses.tolist() == pytest.approx(expected, rel=2e-5, abs=1e-6)


@pytest.mark.parametrize("margin", [1e4, -1e4, 1e3, -1e3])
@pytest.mark.parametrize("name", PREFERENCE)
def test_extreme_margins_stay_finite_loss_and_gradient(name, margin):
    # chosen (or rejected) far more likely than the other, under policy and reference alike
    pc = t([-5.0 + min(margin, 0.0)] * 2).requires_grad_()
    pr = t([-5.0 - max(margin, 0.0)] * 2).requires_grad_()
    refs = (t([-5.0, -5.0]), t([-5.0, -5.0])) if needs_reference(name) else (None, None)
    losses, chosen, rejected = preference_loss(pc, pr, *refs, beta=2.0, loss_type=name, chosen_lengths=t([1, 1]),
                                               rejected_lengths=t([1, 1]),
                                               bco_delta=0.0 if name == "bco_pair" else None)
    losses.sum().backward()
    for x in (losses, chosen, rejected, pc.grad, pr.grad):
        assert torch.isfinite(x).all(), (name, margin, x)


def test_extreme_values_match_their_limits():
    # SimPO, a huge margin either way: no loss at all, or the linear tail beta * |margin| + gamma
    good, _, _ = call("simpo", pc=[-1.0], pr=[-1e4], lc=[1], lr=[1], beta=2.0, simpo_gamma=0.5)
    bad, _, _ = call("simpo", pc=[-1e4], pr=[-1.0], lc=[1], lr=[1], beta=2.0, simpo_gamma=0.5)
    assert good.item() == pytest.approx(0.0, abs=1e-30)
    assert bad.item() == pytest.approx(2.0 * (1e4 - 1.0) + 0.5, rel=1e-6)
    # DiscoPOP far on the wrong side: exp(-z) would overflow, its weight underflows; the logistic part is left
    disco, _, _ = call("discopop", pc=[-1e3], pr=[0.0], rc=[0.0], rr=[0.0], beta=1.0)
    assert disco.item() == pytest.approx(1e3, rel=1e-6)
    # EXO at both ends: the KL to the labels' (1 - eps, eps)
    exo, _, _ = call("exo_pair", pc=[0.0, -1e3], pr=[-1e3, 0.0], rc=[0.0, 0.0], rr=[0.0, 0.0], beta=1.0,
                     label_smoothing=0.01)
    assert exo.tolist() == pytest.approx([-math.log(0.99), -math.log(0.01)], rel=1e-5)


def test_orpo_with_a_per_token_mean_near_zero():
    """log(1 - e^p) is -inf at p = 0 and loses all digits near it in a naive log1p(-exp(p))."""
    pw = t([-1e-5, -1e-3, -0.5, -3.0]).requires_grad_()
    losses, _, _ = preference_loss(pw, t([-2.0] * 4), beta=0.1, loss_type="orpo", chosen_lengths=t([1] * 4),
                                   rejected_lengths=t([1] * 4))
    expected = [formula("orpo", p, -2.0, 0, 0, 1, 1, beta=0.1) for p in (-1e-5, -1e-3, -0.5, -3.0)]
    assert losses.tolist() == pytest.approx(expected, rel=1e-5)
    # at and within float32's reach of 0 (every token certain): finite loss and gradient
    at_zero = t([0.0, -1e-9, -1e-30]).requires_grad_()
    losses, _, _ = preference_loss(at_zero, t([-1e-8] * 3), beta=0.1, loss_type="orpo", chosen_lengths=t([1] * 3),
                                   rejected_lengths=t([1] * 3))
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(at_zero.grad).all()


# where the gradient is checked: policy == reference (reference-free: equal log-probs), except DiscoPOP,
# which rises around z = 0 by design (its mix switches from the logistic to the exponential part there)
def _point(name):
    if name == "discopop":
        return dict(pc=[-4.0], pr=[-6.0], rc=[-5.0], rr=[-5.0])  # h = 2
    return dict(pc=[-5.0], pr=[-5.0], rc=[-5.0], rr=[-5.0])


@pytest.mark.parametrize("name", PREFERENCE)
def test_the_loss_falls_when_chosen_gets_likelier_and_rejected_less(name):
    p = _point(name)
    pc, pr = t(p["pc"]).requires_grad_(), t(p["pr"]).requires_grad_()
    losses, _, _ = call(name, pc=pc, pr=pr, rc=p["rc"], rr=p["rr"], lc=[3], lr=[4], beta=0.5)
    losses.sum().backward()
    assert pc.grad.item() - pr.grad.item() < 0  # the step chosen up, rejected down lowers the loss
    assert pr.grad.item() > 0  # a likelier rejected answer always costs
    if name == "apo_down":  # APO-down lowers the chosen answer too (rejected more): no push up at this point
        assert pc.grad.item() == pytest.approx(0.0, abs=1e-7)
    else:
        assert pc.grad.item() < 0
    # and a small step that way does lower it (the sign, not only the derivative)
    step = 1e-2
    moved, _, _ = call(name, pc=[p["pc"][0] + step], pr=[p["pr"][0] - step], rc=p["rc"], rr=p["rr"], lc=[3], lr=[4],
                       beta=0.5)
    assert moved.item() < losses.item()


def test_weighted_mix_is_the_weighted_sum_and_rpo_alpha_its_shorthand():
    sig_losses, dpo_chosen, dpo_rejected = call("sigmoid", beta=0.5)
    nll = [-c / n for c, n in zip(PC, LC)]
    for loss_type, weights in ((["sigmoid", "sft"], [1.0, 0.5]), ("sigmoid,sft", "1.0,0.5"),
                               ("sigmoid, sft", (1, 0.5))):
        mixed, chosen, rejected = call(loss_type, beta=0.5, loss_weights=weights)
        assert mixed.tolist() == pytest.approx([s + 0.5 * n for s, n in zip(sig_losses.tolist(), nll)], rel=1e-6)
        assert torch.equal(chosen, dpo_chosen) and torch.equal(rejected, dpo_rejected)  # DPO's rewards
    rpo, _, _ = call("sigmoid", beta=0.5, rpo_alpha=0.5)
    assert rpo.tolist() == pytest.approx(call("sigmoid,sft", beta=0.5, loss_weights=[1, 0.5])[0].tolist(), rel=1e-6)
    # default weights are 1; two preference terms add
    both, _, _ = call(["sigmoid", "hinge"], beta=0.5)
    assert both.tolist() == pytest.approx((sig_losses + call("hinge", beta=0.5)[0]).tolist(), rel=1e-6)
    # a reference-free mix needs no reference
    simpo_sft, _, _ = call("simpo,sft", beta=2.0, loss_weights=[1, 2])
    assert simpo_sft.tolist() == pytest.approx(
        [formula("simpo", *pair, beta=2.0) + 2 * formula("sft", *pair, beta=2.0) for pair in zip(PC, PR, RC, RR, LC, LR)],
        rel=1e-6)


def test_rewards_of_each_loss():
    beta = 0.5
    dpo = ([beta * (c - r) for c, r in zip(PC, RC)], [beta * (c - r) for c, r in zip(PR, RR)])
    for name in WITH_REFERENCE:  # DPO's implicit rewards, as TRL logs them for every reference loss
        _, chosen, rejected = call(name, beta=beta)
        assert (chosen.tolist(), rejected.tolist()) == (pytest.approx(dpo[0]), pytest.approx(dpo[1])), name
    means = ([beta * c / n for c, n in zip(PC, LC)], [beta * r / n for r, n in zip(PR, LR)])
    for name in ("simpo", "orpo"):  # beta x the per-token mean log-prob (SimPO's reward; TRL's ORPO)
        _, chosen, rejected = call(name, beta=beta)
        assert (chosen.tolist(), rejected.tolist()) == (pytest.approx(means[0]), pytest.approx(means[1])), name
    _, chosen, rejected = call("cpo", beta=beta)  # TRL's CPO: beta x the summed log-prob
    assert (chosen.tolist(), rejected.tolist()) == (pytest.approx([beta * c for c in PC]),
                                                    pytest.approx([beta * r for r in PR]))
    pc = t(PC).requires_grad_()
    _, chosen, _ = call("simpo", pc=pc, beta=beta)
    assert not chosen.requires_grad


def _escape(text):
    return "".join("\\" + c if c in "[]().*+?" else c for c in text)


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss_type="ipo", label_smoothing=0.1), "label_smoothing only applies to loss_type sigmoid, robust, "
                                                 "exo_pair, aot, aot_unpaired, not 'ipo'"),
    (dict(loss_type="simpo", label_smoothing=0.1), "not 'simpo'"),
    (dict(loss_type="sigmoid,hinge", label_smoothing=0.1), "not 'hinge'"),
    (dict(loss_type="sigmoid,sft", loss_weights=[1.0]), "1 weight(s) for 2 loss_type term(s)"),
    (dict(loss_type="sigmoid,sft", loss_weights="1,x"), "loss_weights '1,x': expected numbers"),
    (dict(loss_type="sigmoid,sft", loss_weights=[1, -1]), "weights must be finite and >= 0"),
    (dict(loss_type="sft"), "'sft' is only the NLL term of a mix"),
    (dict(loss_type="sigmoid,sigmoid"), "names a loss twice"),
    (dict(loss_type="sigmoid,kpo"), "unknown loss_type 'kpo'"),
    (dict(loss_type=""), "names no loss"),
    (dict(loss_type="sigmoid,sft", rpo_alpha=1.0), "rpo_alpha is the shorthand for an 'sft' term"),
    (dict(loss_type="simpo", simpo_gamma=-1.0), "simpo_gamma must be >= 0"),
    (dict(loss_type="discopop", discopop_tau=0.0), "discopop_tau must be > 0"),
])
def test_bad_settings_are_named(kwargs, message):
    kwargs = {"beta": 0.1, **kwargs}
    with pytest.raises(ValueError, match=_escape(message)):
        call(kwargs.pop("loss_type"), **kwargs)


def test_missing_inputs_are_named():
    with pytest.raises(ValueError, match="loss_type 'sigmoid' needs ref_chosen_logps and ref_rejected_logps"):
        preference_loss(t(PC), t(PR), beta=0.1)
    with pytest.raises(ValueError, match="loss_type 'hinge' needs ref_chosen_logps"):
        preference_loss(t(PC), t(PR), beta=0.1, loss_type="simpo,hinge", chosen_lengths=t(LC),
                        rejected_lengths=t(LR))
    with pytest.raises(ValueError, match="'simpo' is reference-free: pass ref_chosen_logps = ref_rejected_logps = None"):
        preference_loss(t(PC), t(PR), t(RC), t(RR), beta=0.1, loss_type="simpo", chosen_lengths=t(LC),
                        rejected_lengths=t(LR))
    for name, missing, given in (("simpo", "chosen", {"rejected_lengths": t(LR)}), ("orpo", "rejected", {"chosen_lengths": t(LC)}),
                                 ("cpo", "chosen", {}), ("ipo", "rejected", {"chosen_lengths": t(LC)})):
        refs = (t(RC), t(RR)) if needs_reference(name) else ()
        with pytest.raises(ValueError, match=f"loss_type '{name}' needs {missing}_lengths"):
            preference_loss(t(PC), t(PR), *refs, beta=0.1, loss_type=name, **given)
    # cpo needs only the chosen lengths (its NLL); sigmoid none
    call("cpo", lr=LR, beta=0.1)
    preference_loss(t(PC), t(PR), None, None, beta=0.1, loss_type="cpo", chosen_lengths=t(LC))
    preference_loss(t(PC), t(PR), t(RC), t(RR), beta=0.1)


# --- settings: flags, run-config files, validation -----------------------------------------------

def _cfg(tmp_path, tiny_model_dir, **over):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    kw = dict(model=tiny_model_dir, data=str(data), output_dir=str(tmp_path / "out"),
              deepspeed=os.path.join(ROOT, "ds_configs/zero2.json"))
    kw.update(over)
    return RunConfig(**kw)


def test_loss_settings_from_flags_and_run_config_files(tmp_path, tiny_model_dir):
    cfg = parse_config(["--loss_type", "sigmoid,sft", "--loss_weights", "1.0,0.5", "--simpo_gamma", "0.7",
                        "--discopop_tau", "0.1"])
    # lists given as text are parsed once, where the settings come in (issue 21)
    assert (cfg.loss_type, cfg.loss_weights, cfg.simpo_gamma, cfg.discopop_tau) == (["sigmoid", "sft"], [1.0, 0.5], 0.7, 0.1)
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("loss_type: [sigmoid, sft]\nloss_weights: [1.0, 0.5]\n")
    cfg = parse_config(["--config", str(yaml_path)])
    assert (cfg.loss_type, cfg.loss_weights) == (["sigmoid", "sft"], [1.0, 0.5])
    validate(_cfg(tmp_path, tiny_model_dir, loss_type=cfg.loss_type, loss_weights=cfg.loss_weights))
    validate(_cfg(tmp_path, tiny_model_dir, loss_type="orpo"))


@pytest.mark.parametrize("over, message", [
    (dict(loss_type="simpo", precompute_ref=True), "--precompute_ref does not apply: loss_type simpo is reference-free"),
    (dict(loss_type=["orpo", "sft"], ref_model="MODEL"), "--ref_model does not apply: loss_type orpo,sft is reference-free"),
    (dict(loss_type="cpo", label_smoothing=0.1), "label_smoothing only applies to loss_type sigmoid, robust, exo_pair, "
                                                   "aot, aot_unpaired, not 'cpo'"),
    (dict(loss_type="sigmoid,sft", loss_weights="1"), "1 weight(s) for 2 loss_type term(s)"),
    (dict(loss_type="discopop", discopop_tau=-1.0), "discopop_tau must be > 0"),
])
def test_settings_that_do_not_apply_are_one_line_errors(tmp_path, tiny_model_dir, over, message):
    over = {k: tiny_model_dir if v == "MODEL" else v for k, v in over.items()}
    with pytest.raises(ConfigError, match=_escape(message)) as info:
        validate(_cfg(tmp_path, tiny_model_dir, **over))
    assert "\n" not in str(info.value)
    # with a loss that uses the reference, both are fine
    validate(_cfg(tmp_path, tiny_model_dir, ref_model=tiny_model_dir, precompute_ref=True))


# --- real runs: a reference-free loss trains on the policy alone ----------------------------------

@pytest.fixture(scope="module")
def letters_vs_digits(tmp_path_factory):
    """16 pairs whose chosen answers are letters and rejected ones digits, of equal length: an untrained
    model has no preference, a few steps learn one."""
    rng = random.Random(1)
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    with open(path, "w") as f:
        for i in range(16):
            n = rng.randint(3, 6)
            f.write(json.dumps({"prompt": f"Write {n} symbols.",
                                "chosen": " ".join(rng.choice("abcdefgh") for _ in range(n)),
                                "rejected": " ".join(rng.choice("12345678") for _ in range(n))}) + "\n")
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type, beta", [("simpo", 2.0), ("cpo", 0.1), ("orpo", 0.1)])
def test_reference_free_run_learns_without_a_reference_model(tmp_path, tiny_model_dir, letters_vs_digits, monkeypatch,
                                                             loss_type, beta):
    import deepspeed

    import minidpo.train
    from minidpo.train import train

    counts = {"models": 0, "engines": 0, "reference_engines": 0}

    def counting(key, fn):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return fn(*args, **kwargs)
        return wrapper

    # the real functions, counted: every model loaded, every DeepSpeed engine built
    monkeypatch.setattr(minidpo.train, "load_causal_lm", counting("models", minidpo.train.load_causal_lm))
    monkeypatch.setattr(minidpo.train, "build_reference_engine",
                        counting("reference_engines", minidpo.train.build_reference_engine))
    monkeypatch.setattr(deepspeed, "initialize", counting("engines", deepspeed.initialize))
    monkeypatch.setattr("minidpo.reference.CACHE_DIR", str(tmp_path / "ref_cache"))
    out = tmp_path / loss_type
    train(RunConfig(model=tiny_model_dir, data=letters_vs_digits, output_dir=str(out), loss_type=loss_type, beta=beta,
                    deepspeed=f"{ROOT}/ds_configs/zero2.json", dtype="fp32", learning_rate=5e-3, batch_size=8,
                    epochs=3, log_interval=1, save_interval=0, max_length=64, max_prompt_length=32, export=False))
    assert counts == {"models": 1, "engines": 1, "reference_engines": 0}
    assert not (tmp_path / "ref_cache").exists()  # no reference table either
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    acc = [r["rewards/accuracies"] for r in rows]
    assert len(rows) == 6 and all(math.isfinite(r["loss"]) for r in rows)
    assert acc[0] <= 0.75 and acc[-1] == 1.0, acc  # from chance to every pair ranked right
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"]
