"""The health checks (minidpo.health): each is tripped by a metric stream built for it, fed through the
real MetricTracker (the sums it reduces at log time, its metrics.jsonl and TensorBoard), and stays
silent on the healthy variant of that stream; data red flags on a file built to have them; and real
DeepSpeed runs that trip reference mismatch and dead learning."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from minidpo.config import RunConfig
from minidpo.health import CHECKS, HealthMonitor, data_red_flags, health_markdown, run_health
from minidpo.metrics import MetricTracker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LN2 = math.log(2)


def tracker(tmp_path, **settings):
    cfg = RunConfig(**settings)
    return MetricTracker(str(tmp_path), 10, 0, tensorboard=True, health=HealthMonitor(cfg))


def step(t, *, loss=LN2, chosen=(0.0,) * 4, rejected=(0.0,) * 4, logratio=None, rejected_logratio=0.0, length=10,
         rejected_length=10, grad_norm=1.0):
    """One optimizer step of one micro-batch: per-pair losses and rewards, the answers' log-ratios to the
    reference (None: no reference) and their lengths."""
    n = len(chosen)
    c, r = torch.tensor(chosen), torch.tensor(rejected)
    logratios = None if logratio is None else (torch.full((n,), float(logratio)),
                                               torch.full((n,), float(rejected_logratio)))
    t.add_micro_step(torch.full((n,), loss), c, r, c - 5, r - 5, tokens=40 * n, aux_loss=0.0, logratios=logratios,
                     lengths=(torch.full((n,), float(length)), torch.full((n,), float(rejected_length))))
    t.add_optimizer_step(grad_norm, 1e-5)


def rows(tmp_path):
    return [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]


def fired(tmp_path, check):
    return [r[f"health/{check}"] for r in rows(tmp_path)]


@pytest.mark.parametrize("trip", [True, False])
def test_likelihood_displacement(tmp_path, trip):
    t = tracker(tmp_path)
    for k in (1, 2, 3):  # both rewards negative and falling; chosen 0.2, 0.4, 0.6 nats/token below the reference
        chosen = -0.1 * k if trip else 0.1 * k
        step(t, chosen=(chosen,) * 4, rejected=(-0.3 * k,) * 4, logratio=10 * chosen / 0.5, length=10)
        t.log(k)
    assert fired(tmp_path, "displacement") == ([0, 0, 1] if trip else [0, 0, 0])
    if trip:
        warning = rows(tmp_path)[2]["health/warnings"]["displacement"]
        assert warning.startswith("likelihood displacement") and "--rpo_alpha" in warning
        assert "-0.600 nats/token" in warning


@pytest.mark.parametrize("drift", [0.8, 0.1])
def test_saturation(tmp_path, drift):
    t = tracker(tmp_path)
    for k in (1, 2, 3):  # accuracy 1, margins 1, 2, 3: saturated; far from the reference only with drift 0.8
        step(t, chosen=(k / 2,) * 4, rejected=(-k / 2,) * 4, logratio=drift * 10, length=10)
        t.log(k)
    assert fired(tmp_path, "saturation") == ([0, 0, 1] if drift > 0.5 else [0, 0, 0])
    assert not any(fired(tmp_path, "displacement"))


@pytest.mark.parametrize("exploit", [True, False])
def test_length_exploitation(tmp_path, exploit):
    """Chosen answers 20 tokens, rejected 10, beta 0.1. Exploited: both 0.1 nats/token above the reference,
    so every summed margin (2.0 - 1.0 nats) is positive and no per-token one is. Healthy: 0.2 vs 0.05."""
    per_token = (0.1, 0.1) if exploit else (0.2, 0.05)
    t = tracker(tmp_path)
    for k in (1, 2, 3):
        a, b = 20 * per_token[0], 10 * per_token[1]
        step(t, chosen=(0.1 * a,) * 6, rejected=(0.1 * b,) * 6, logratio=a, rejected_logratio=b, length=20,
             rejected_length=10)
        t.log(k)
    assert [r["rewards/accuracies"] for r in rows(tmp_path)] == [1.0] * 3
    assert fired(tmp_path, "length_exploitation") == ([0, 0, 1] if exploit else [0, 0, 0])
    if exploit:
        warning = rows(tmp_path)[2]["health/warnings"]["length_exploitation"]
        assert "reward accuracy 1.00, but 0.00 with each answer's log-ratio per token" in warning
        assert "--health_length_gap 0.3" in warning


def test_dead_learning_from_a_loss_that_does_not_move(tmp_path):
    t = tracker(tmp_path, learning_rate=4e-8)
    for k in range(1, 6):  # the loss stays at ln 2: margins of 1e-4
        step(t, chosen=(1e-4,) * 4, rejected=(0.0,) * 4, logratio=1e-3, length=10)
        t.log(k)
    assert fired(tmp_path, "dead_learning") == [0, 0, 1, 1, 1]
    warning = rows(tmp_path)[2]["health/warnings"]["dead_learning"]
    assert "--learning_rate 4e-08 is far too small" in warning and "reward margin is 1.0e-04" in warning
    assert "health/warnings" not in rows(tmp_path)[3]  # printed once; again after health_repeat intervals


def test_dead_learning_from_a_zero_gradient_fires_at_once(tmp_path):
    t = tracker(tmp_path)
    step(t, logratio=0.0, grad_norm=0.0)
    t.log(1)
    assert fired(tmp_path, "dead_learning") == [1]
    assert "frozen parameters" in rows(tmp_path)[0]["health/warnings"]["dead_learning"]


@pytest.mark.parametrize("first_loss, trips", [(0.9, True), (LN2, False)])
def test_reference_mismatch_reads_the_first_step_alone(tmp_path, first_loss, trips):
    """log_interval 2: the interval's mean loss is not ln 2 either way; only step 1's own loss decides."""
    t = tracker(tmp_path)
    step(t, loss=first_loss, logratio=0.5)
    step(t, loss=0.3, logratio=0.5)
    t.log(2)
    step(t, loss=0.3, logratio=0.5)
    t.log(3)
    assert rows(tmp_path)[0]["loss"] == pytest.approx((first_loss + 0.3) / 2)
    assert fired(tmp_path, "reference_mismatch") == ([1, 0] if trips else [0, 0])
    if trips:
        assert "first step's loss is 0.9000, not 0.6931 (ln 2)" in rows(tmp_path)[0]["health/warnings"]["reference_mismatch"]


def test_reference_mismatch_with_an_rpo_term_reads_the_log_ratios(tmp_path):
    t = tracker(tmp_path, rpo_alpha=1.0)  # the first loss depends on the model: the log-ratios must be 0
    step(t, loss=3.0, logratio=2.0, length=10)
    t.log(1)
    assert fired(tmp_path, "reference_mismatch") == [1]
    assert "0.2000 nats/token" in rows(tmp_path)[0]["health/warnings"]["reference_mismatch"]


@pytest.mark.parametrize("logratio, trips", [(1.0, True), (0.3, False)])
def test_reference_mismatch_a_small_beta_hides_from_the_loss(tmp_path, logratio, trips):
    t = tracker(tmp_path, beta=0.01)  # a loss within tolerance of ln 2, log-ratios 0.1 (or 0.03) nats/token
    step(t, loss=LN2 + 0.001, logratio=logratio, length=10)
    t.log(1)
    assert fired(tmp_path, "reference_mismatch") == ([1] if trips else [0])


def test_a_warning_that_persists_is_printed_again_and_lands_in_tensorboard(tmp_path, capsys):
    t = tracker(tmp_path, health_repeat=2)
    for k in range(1, 6):
        step(t, logratio=0.0, grad_norm=0.0)
        t.log(k)
    t.close()
    printed = [r["step"] for r in rows(tmp_path) if "health/warnings" in r]
    assert printed == [1, 3, 5]
    assert capsys.readouterr().out.count("minidpo: health warning at step") == 3
    assert t.health.warnings() == [{"check": "dead_learning", "step": 1, "last_step": 5, "intervals": 5,
                                    "message": rows(tmp_path)[0]["health/warnings"]["dead_learning"]}]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert {f"health/{c}" for c in CHECKS} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("health/dead_learning")] == [1.0] * 5
    assert len(events.Tensors("health/dead_learning/text_summary")) == 3


def test_health_off_writes_no_health_columns(tmp_path):
    t = MetricTracker(str(tmp_path), 10, 0, tensorboard=False)
    step(t, grad_norm=0.0)
    t.log(1)
    assert not [k for k in rows(tmp_path)[0] if k.startswith("health/")]


def test_data_red_flags(tmp_path, tiny_model_dir):
    from minidpo.data import load_preference_data
    from minidpo.models import load_tokenizer

    records = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": f"{2 * i + 1}."} for i in range(6)]
    records += [{"prompt": "Same?", "chosen": "yes", "rejected": "yes"},  # identical: skipped
                {"prompt": "Empty?", "chosen": " ", "rejected": "no"},  # empty: skipped
                {"prompt": "long " * 80, "chosen": "a", "rejected": "b"},  # the prompt is cut
                {"prompt": "Q", "chosen": "word " * 80, "rejected": "short"}]  # the chosen answer is cut
    path = tmp_path / "flags.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = RunConfig(max_length=64, max_prompt_length=32, health_truncated_share=0.05)
    tokenizer = load_tokenizer(tiny_model_dir)
    ds = load_preference_data(path, tokenizer, max_length=64, max_prompt_length=32, on_bad_record="skip",
                              max_bad_fraction=None, cache_dir=None, log=None)
    flags = data_red_flags(ds, tokenizer, cfg)
    assert len(ds) == 8 and len(flags) == 4, flags
    identical, empty, answers, prompts = flags
    assert identical.startswith("1 pairs have identical chosen and rejected")
    assert empty.startswith("1 answers are empty")
    assert answers.startswith("1 of 8 pairs (12%) have an answer cut at max_length=64")
    assert prompts.startswith("1 of 8 prompts (12%) fill max_prompt_length=32")
    assert data_red_flags(ds, tokenizer, RunConfig(max_length=64, max_prompt_length=32))[2:] == []  # 12% < 20%


def test_run_health_markdown_from_a_run_folder(tmp_path):
    (tmp_path / "export").mkdir()
    assert run_health(tmp_path / "export") is None and health_markdown(tmp_path) == ""
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 4, "health": []}))
    assert "No health warning fired" in health_markdown(tmp_path / "export")
    warning = {"check": "saturation", "step": 30, "last_step": 50, "intervals": 3, "message": "over-optimisation: ..."}
    data = {"check": "data", "step": 0, "message": "3 answers are empty ..."}
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 4, "health": [data, warning]}))
    md = health_markdown(tmp_path / "export")
    assert "- **data** (at load): 3 answers are empty ..." in md
    assert "- **saturation** (step 30, 3 log intervals until step 50): over-optimisation: ..." in md


# --- real DeepSpeed runs on the tiny model ----------------------------------------------------------

@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    with open(path, "w") as f:
        for a in range(16):
            f.write(json.dumps({"prompt": f"What is {a} + {a}?", "chosen": f"{a} + {a} = {2 * a}.",
                                "rejected": f"{a} + {a} = {2 * a + 3}."}) + "\n")
    return str(path)


def train_run(tmp_path, model, data, **over):
    from minidpo.train import train

    kw = dict(model=model, data=data, output_dir=str(tmp_path), deepspeed=f"{ROOT}/ds_configs/zero2.json", dtype="fp32",
              learning_rate=1e-3, batch_size=4, max_steps=4, log_interval=1, save_interval=0, max_length=64,
              max_prompt_length=32, beta=0.5, health_patience=2)
    kw.update(over)
    return train(RunConfig(**kw))


@pytest.mark.slow
def test_runs_trip_reference_mismatch_and_dead_learning(tmp_path, tiny_model_dir, pairs_file, capsys):
    from conftest import build_tiny_model_dir

    other = build_tiny_model_dir(tmp_path / "other", seed=1)  # another model as the reference
    summary = train_run(tmp_path / "mismatch", tiny_model_dir, pairs_file, ref_model=str(other), max_steps=1)
    assert [w["check"] for w in summary["health"]] == ["reference_mismatch"]
    assert "health warning at step 1: reference mismatch" in capsys.readouterr().out
    written = json.loads((tmp_path / "mismatch/summary.json").read_text())["health"]
    assert written == summary["health"]

    summary = train_run(tmp_path / "dead", tiny_model_dir, pairs_file, learning_rate=1e-12)
    assert [w["check"] for w in summary["health"]] == ["dead_learning"]
    assert summary["health"][0]["step"] == 2  # health_patience 2: two intervals in a row
    assert "--learning_rate 1e-12 is far too small" in summary["health"][0]["message"]
    metrics = [json.loads(line) for line in open(tmp_path / "dead/metrics.jsonl")]
    assert [r["health/dead_learning"] for r in metrics] == [0, 1, 1, 1]


def test_health_and_report_to_flags():
    from minidpo.config import parse_config, report_to_names

    cfg = parse_config(["--health", "off", "--report_to", "none", "--health_patience", "5"])
    assert cfg.health is False and cfg.health_patience == 5 and report_to_names(cfg.report_to) == []
    assert RunConfig.resume_rule("health_kl_per_token") == "free"  # a resume may change any of them
    assert report_to_names(RunConfig().report_to) == ["tensorboard"]
