"""minidpo.eval on tiny random models: every figure computed and in range, files written; the CLI's
flags; held-out data in the trainer's other formats."""

from __future__ import annotations

import json
import math

import pytest

from minidpo.demo.generate import AXES, write_dataset
from minidpo.demo.judge import judge_heldout
from minidpo.eval import evaluate, main

FAST = dict(n_generate=16, max_new_tokens=8, n_kl=8, batch_size=8, judge=judge_heldout)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo_data")
    write_dataset(d, seed=0, n_train=80, n_heldout=40)
    return str(d / "heldout.jsonl")


def _tb_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {t: acc.Scalars(t)[-1].value for t in acc.Tags()["scalars"]}


def _in_unit(x):
    return x is not None and 0.0 <= x <= 1.0


def test_same_model_twice(tiny_model_dir, heldout, tmp_path):
    out = tmp_path / "eval"
    res = evaluate(tiny_model_dir, tiny_model_dir, heldout, out, beta=0.1, seed=0, **FAST)
    p = res["preference"]
    assert p["n_pairs"] == 40
    # identical models: every implicit reward is exactly 0, so no pair is "won" and all are ties
    assert p["implicit_reward_accuracy"] == 0.0 and p["implicit_reward_ties"] == 1.0
    assert p["implicit_reward_margin"] == 0.0 and p["rewards_chosen"] == 0.0
    assert p["logp_accuracy"]["sft"] == p["logp_accuracy"]["dpo"] and _in_unit(p["logp_accuracy"]["sft"])
    assert _in_unit(p["logp_accuracy_per_token"]["dpo"])
    assert p["logps_chosen"]["sft"] < 0 and p["logps_rejected"]["dpo"] < 0
    assert set(res["preference_by_axis"]) == set(AXES)
    assert sum(d["n_pairs"] for d in res["preference_by_axis"].values()) == 40

    j = res["judge"]
    assert set(j) == {"all", *AXES} and j["all"]["n"] == 16
    for axis in AXES:
        assert j[axis]["n"] == 4 and set(j[axis]["by_lang"]) == {"en", "zh"}
        assert _in_unit(j[axis]["sft_rate"]) and _in_unit(j[axis]["dpo_rate"])
        assert j[axis]["sft_pass"] == j[axis]["dpo_pass"]  # same model, same seed, same answers
    k = res["kl"]
    assert k["n_samples"] == 8 and k["level"] == "sequence"
    assert k["kl_sequence"] == pytest.approx(0.0, abs=1e-5) and k["kl_per_token"] == pytest.approx(0.0, abs=1e-6)
    assert _in_unit(k["truncated_fraction"]) and 0 < k["mean_answer_tokens"] <= 8
    assert len(res["examples"]) == 16 and all(e["sft"] == e["dpo"] for e in res["examples"])

    saved = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert saved["preference"] == p and saved["settings"]["beta"] == 0.1
    md = (out / "eval.md").read_text(encoding="utf-8")
    for heading in ("Preference accuracy", "Behaviour judged by rule", "KL(π_dpo ‖ π_sft)", "Side by side"):
        assert heading in md
    tags = _tb_tags(out)
    assert tags["eval/implicit_reward_accuracy"] == 0.0
    assert tags["eval/kl_dpo_sft"] == pytest.approx(0.0, abs=1e-5)
    for axis in AXES:
        assert f"eval/judge/{axis}/dpo" in tags and f"eval/judge/{axis}/sft" in tags
        assert f"eval/implicit_reward_accuracy/{axis}" in tags


def test_two_different_models_and_cli(tiny_model_dir, heldout, tmp_path):
    from conftest import build_tiny_model_dir

    other = build_tiny_model_dir(tmp_path / "other", seed=1)  # same tokenizer, other weights
    out = tmp_path / "cli"
    res = main(["--sft", tiny_model_dir, "--dpo", str(other), "--data", heldout, "--output_dir", str(out),
                "--beta", "0.5", "--n_generate", "8", "--max_new_tokens", "6", "--n_kl", "4", "--seed", "3",
                "--judge", "minidpo.demo.judge:judge_heldout"])
    p = res["preference"]
    assert 0.0 < p["implicit_reward_accuracy"] < 1.0 and p["implicit_reward_ties"] == 0.0
    assert math.isfinite(res["kl"]["kl_sequence"]) and res["kl"]["kl_sequence"] != 0.0
    assert res["judge"]["all"]["n"] == 8 and res["settings"]["beta"] == 0.5
    assert (out / "eval.json").exists() and (out / "eval.md").exists()
    # every judged answer, both models', for re-scoring (python -m minidpo.demo.refusals reads it)
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 8 and {r["axis"] for r in rows} <= set(AXES)
    assert sum(r["dpo_ok"] for r in rows) == res["judge"]["all"]["dpo_pass"]
    assert sum(r["sft_ok"] for r in rows) == res["judge"]["all"]["sft_pass"]


def test_skipping_generation_and_kl(tiny_model_dir, heldout, tmp_path):
    res = evaluate(tiny_model_dir, tiny_model_dir, heldout, tmp_path, n_generate=0, n_kl=0, tensorboard=False,
                   judge=judge_heldout)
    assert res["judge"] is None and res["kl"] is None and res["examples"] == []
    assert "Preference accuracy" in (tmp_path / "eval.md").read_text(encoding="utf-8")


def test_clear_errors(tiny_model_dir, heldout, tmp_path):
    from conftest import build_tiny_model_dir

    other_vocab = build_tiny_model_dir(tmp_path / "v", vocab_size=300)
    with pytest.raises(ValueError, match="tokenizers .* differ"):
        evaluate(tiny_model_dir, str(other_vocab), heldout, tmp_path / "x", n_generate=0, n_kl=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="DPO model folder .* has no config.json"):
        evaluate(tiny_model_dir, str(tmp_path / "empty"), heldout, tmp_path / "x")
    with pytest.raises(ValueError, match="DPO model folder not found: .*missing"):  # one loader, one message
        evaluate(tiny_model_dir, str(tmp_path / "missing"), heldout, tmp_path / "x")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a"}\n', encoding="utf-8")
    # the trainer's reader names file, line and field
    with pytest.raises(ValueError, match=r'bad.jsonl:1: field "rejected": missing'):
        evaluate(tiny_model_dir, tiny_model_dir, bad, tmp_path / "y")
    with pytest.raises(ValueError, match="beta"):
        evaluate(tiny_model_dir, tiny_model_dir, heldout, tmp_path / "z", beta=0.0)


def test_beta_from_the_dpo_run_config(tmp_path):
    from minidpo.models import trained_beta

    export = tmp_path / "run" / "export"
    export.mkdir(parents=True)
    assert trained_beta(export) == 0.1  # no run_config.json: the trainer's default
    (tmp_path / "run" / "run_config.json").write_text(json.dumps({"run": {"beta": 0.5}}))
    assert trained_beta(export) == 0.5
    (tmp_path / "run" / "run_config.json").write_text("{not json")
    assert trained_beta(export, default=0.2) == 0.2
