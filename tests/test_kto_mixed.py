"""Pairs and unpaired examples in one run (loss_type sigmoid,kto): the combined loss and its metrics against
hand values, the plan's one kind per micro-step on every rank, the settings and data kinds it refuses, the
comma list of --data, and real DeepSpeed runs (ZeRO-2, LoRA, two ranks under ZeRO-3)."""

from __future__ import annotations

import json
import math
import os
import random
import re

import pytest
import torch
from transformers import AutoTokenizer

from test_kto import _cfg as kto_cfg

from minidpo.checkpoint import content_hash
from minidpo.config import RunConfig, validate
from minidpo.data import batch_plan, load_preference_data
from minidpo.data.files import data_files
from minidpo.errors import ConfigError, DataError
from minidpo.losses import check_loss_settings, preference_loss
from minidpo.losses.settings import split_kto
from minidpo.metrics import MetricTracker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LN2 = math.log(2)


def sig(x):
    return 1 / (1 + math.exp(-x))


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


# ------------------------------------------------------------------------------------------- the loss

def test_a_mixed_step_minimises_the_mean_over_all_its_rows_and_logs_each_kind_apart(tmp_path):
    """Two pairs (sigmoid, weight 1) and two unpaired examples (kto, weight 0.5) of one optimizer step, through
    the trainer's own pieces: the loss is the mean over the 4 rows; pairs' metrics over pairs, KTO's over
    unpaired examples."""
    from minidpo.train import kto_micro_step

    cfg = RunConfig(loss_type="sigmoid,kto", loss_weights=[1.0, 0.5], beta=0.5, desirable_weight=1.5,
                    undesirable_weight=0.8)
    pairwise, pairwise_weights, kto_weight = split_kto(cfg.loss_type, cfg.loss_weights)
    assert (pairwise, pairwise_weights, kto_weight) == (["sigmoid"], [1.0], 0.5)
    beta = 0.5
    # pairs: a = log-ratio of chosen, b = of rejected
    pc, pr, rc, rr = t(-3.0, -4.0), t(-5.0, -2.5), t(-3.5, -4.2), t(-4.5, -3.0)
    pair_losses, chosen_rewards, rejected_rewards = preference_loss(
        pc, pr, rc, rr, beta=beta, loss_type=pairwise, loss_weights=pairwise_weights)
    a, b = [0.5, 0.2], [-0.5, 0.5]
    hand_pairs = [-math.log(sig(beta * (x - y))) for x, y in zip(a, b)]
    assert pair_losses.tolist() == pytest.approx(hand_pairs, abs=1e-6)
    # unpaired: matched and mismatched (next prompt) log-probs; z = mean mismatched log-ratio = (0.4 + 0.2) / 2
    labels = [True, False]
    losses, rewards, label_t, kl = kto_micro_step(cfg, labels, (t(-2.0, -6.0), t(-7.0, -5.0)),
                                                  (t(-2.5, -5.5), t(-7.4, -5.2)), None, kto_weight)
    z, r = 0.3, [0.5, -0.5]
    hand_kto = [0.5 * 1.5 * (1 - sig(beta * (r[0] - z))), 0.5 * 0.8 * (1 - sig(beta * (z - r[1])))]
    assert kl.item() == pytest.approx(z) and losses.tolist() == pytest.approx(hand_kto, abs=1e-6)
    combined = (sum(hand_pairs) + sum(hand_kto)) / 4
    # the trainer's normalisation: each micro-batch's sum / batch_size (2), DeepSpeed's / grad_accum (2)
    assert ((pair_losses.sum() / 2 + losses.sum() / 2) / 2).item() == pytest.approx(combined, abs=1e-6)

    tracker = MetricTracker(str(tmp_path), 1, 0, tensorboard=False)
    tracker.add_micro_step(pair_losses, chosen_rewards, rejected_rewards, pc, pr, tokens=40, aux_loss=0.0)
    tracker.add_micro_step(losses, rewards * label_t, rewards * ~label_t, t(-2.0, -6.0) * label_t,
                           t(-2.0, -6.0) * ~label_t, tokens=30, aux_loss=0.0, kto=(label_t, kl))
    tracker.add_optimizer_step(None, 1e-3)
    row = tracker.log(1)
    tracker.close()
    assert row["loss"] == pytest.approx(combined, abs=1e-6)
    # pairs only: rewards beta * a = (0.25, 0.1), beta * b = (-0.25, 0.25); the second pair is ranked wrong
    assert row["rewards/accuracies"] == 0.5
    assert row["rewards/chosen"] == pytest.approx(0.175) and row["rewards/rejected"] == pytest.approx(0.0)
    assert row["rewards/margins"] == pytest.approx(0.175)
    assert row["logps/chosen"] == pytest.approx(-3.5)
    # unpaired only: each label's mean reward beta * r and log-prob, the share of right signs, z
    assert row["kto/rewards/desirable"] == pytest.approx(0.25)
    assert row["kto/rewards/undesirable"] == pytest.approx(-0.25)
    assert row["kto/logps/desirable"] == pytest.approx(-2.0) and row["kto/logps/undesirable"] == pytest.approx(-6.0)
    assert row["kto/accuracies"] == 1.0 and row["kl"] == pytest.approx(z)
    assert row["kto/loss"] == pytest.approx(sum(hand_kto) / 2)
    assert row["kto/desirable_share"] == 0.5 and row["kto/unpaired_share"] == 0.5
    assert tracker.totals["pairs"] == 4  # every row


def test_split_kto_gives_the_pairwise_terms_their_weights_and_kto_its_own():
    assert split_kto("ipo,kto", [2.0, 0.5]) == (["ipo"], [2.0], 0.5)
    assert split_kto("kto,sigmoid,sft", "0.3,1,0.2") == (["sigmoid", "sft"], [1.0, 0.2], 0.3)
    assert split_kto("kto", None) == ([], [], 1.0)
    assert split_kto("sigmoid", None) == (["sigmoid"], [1.0], 1.0)


# ------------------------------------------------------------------------------------------- the plan

def test_a_mixed_plan_keeps_one_kind_per_micro_step_on_every_rank():
    rng = random.Random(0)
    kinds = [rng.choice(["pairs", "unpaired examples"]) for _ in range(40)]
    lengths = [rng.randint(5, 60) for _ in kinds]
    n_pairs = kinds.count("pairs")
    for group_by_length in (True, False):
        plans = [batch_plan(lengths, 3, seed=1, epoch=2, rank=r, world_size=2, group_by_length=group_by_length,
                            kinds=kinds) for r in (0, 1)]
        # each kind cut into steps of 3 x 2 on its own, its leftover dropped; the same count on every rank
        assert len(plans[0]) == len(plans[1]) == n_pairs // 6 + (40 - n_pairs) // 6
        seen = set()
        for batches in zip(*plans):
            assert all(len(b) == 3 for b in batches)
            assert len({kinds[i] for b in batches for i in b}) == 1  # every rank runs the same path
            assert seen.isdisjoint(i for b in batches for i in b)
            seen.update(i for b in batches for i in b)
        assert {kinds[b[0]] for b in plans[0]} == {"pairs", "unpaired examples"}
    # one kind is exactly today's plan (so a resumed pairs-only or kto-only run skips what it did)
    plain = batch_plan(lengths, 3, seed=1, epoch=2, rank=1, world_size=2)
    assert batch_plan(lengths, 3, seed=1, epoch=2, rank=1, world_size=2, kinds=["pairs"] * 40) == plain
    with pytest.raises(ValueError, match="^only 3 unpaired examples: fewer than one step of batch_size 2 x 2 ranks"):
        batch_plan([10] * 12, 2, seed=0, epoch=0, world_size=2, kinds=["pairs"] * 9 + ["unpaired examples"] * 3)


# ------------------------------------------------------------------------------------------- settings

def _cfg(tmp_path, model_dir, **over):
    return kto_cfg(tmp_path, model_dir, **{"loss_type": "sigmoid,kto", **over})  # test_kto's, another loss


@pytest.mark.parametrize("over, message", [
    (dict(precompute_ref=True), r"^--precompute_ref is not supported with loss_type sigmoid,kto \(the reference"),
    (dict(max_tokens_per_batch=512, loss_type="ipo,kto"),
     r"^--max_tokens_per_batch is not supported with loss_type ipo,kto \("),
    (dict(sync_ref_model=True), r"^--sync_ref_model is not supported with loss_type sigmoid,kto \(TR-DPO"),
    (dict(loss_type="kto,sft"), r"^loss_type kto,sft: kto mixes with a pairwise preference loss"),
    (dict(loss_type="listwise_pairs,kto"), "^loss_type listwise_pairs trains on listwise data and takes no other"),
    (dict(use_weighting=True), "^use_weighting does not apply to loss_type 'kto'"),
    (dict(loss_weights=[1.0]), r"^loss_weights \(1.0,\): 1 weight\(s\) for 2 loss_type term\(s\)"),
])
def test_settings_that_do_not_apply_to_a_mixed_run_are_one_line_errors(tmp_path, tiny_model_dir, over, message):
    for fine in (dict(), dict(loss_type="ipo,kto", loss_weights=[1.0, 0.5], desirable_weight=1.33, kto_kl="0.1"),
                 dict(loss_type="simpo,kto"), dict(loss_type="sigmoid,sft,kto"), dict(rpo_alpha=0.5)):
        validate(_cfg(tmp_path, tiny_model_dir, **fine))
    with pytest.raises(ConfigError, match=message) as error:
        validate(_cfg(tmp_path, tiny_model_dir, **over))
    assert "\n" not in str(error.value)


def test_the_loss_settings_take_kto_with_pairwise_terms_only():
    assert check_loss_settings("sigmoid,kto", 0.1, loss_weights="1,0.5") == [("sigmoid", 1.0), ("kto", 0.5)]
    assert check_loss_settings("kto,sigmoid", 0.1, rpo_alpha=0.3) == [("kto", 1.0), ("sigmoid", 1.0), ("sft", 0.3)]
    with pytest.raises(ValueError, match="rpo_alpha does not apply to loss_type kto alone"):
        check_loss_settings("kto", 0.1, rpo_alpha=0.3)
    with pytest.raises(ValueError, match="names a loss twice"):
        check_loss_settings("kto,sigmoid,kto", 0.1)


# ------------------------------------------------------------------------------------------- data

def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _pairs(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        out.append({"prompt": f"What is {a} + {b}?", "chosen": f"{a} + {b} = {a + b}.",
                    "rejected": f"{a} + {b} = {a + b + rng.randint(1, 9)}."})
    return out


def _unpaired(n, seed=1):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        good = i % 2 == 0
        answer = f"{a} + {b} = {a + b}." if good else f"I do not know what {a} + {b} is."
        out.append({"prompt": f"What is {a} + {b}?", "completion": answer, "label": good})
    return out


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_data_takes_a_comma_separated_list_of_files_and_folders(tmp_path, tok, tiny_model_dir):
    pairs = _write(tmp_path / "votes.jsonl", _pairs(3))
    folder = tmp_path / "thumbs"
    folder.mkdir()
    unpaired = _write(folder / "votes_unpaired.jsonl", _unpaired(2))
    listed = f"{pairs}, {folder}"  # a space after the comma is allowed
    assert data_files(listed) == [pairs, unpaired]
    cache = str(tmp_path / "cache")
    ds = load_preference_data(listed, tok, max_length=64, cache_dir=cache, log=None)
    assert ds.labels == [None, None, None, True, False]
    assert ds.sources == ["votes.jsonl:1", "votes.jsonl:2", "votes.jsonl:3", "votes_unpaired.jsonl:1",
                          "votes_unpaired.jsonl:2"]
    assert load_preference_data(listed, tok, max_length=64, cache_dir=cache, log=None).stats.from_cache
    # the cache key holds every file of the list: a change to the second is seen
    _write(folder / "votes_unpaired.jsonl", _unpaired(3))
    again = load_preference_data(listed, tok, max_length=64, cache_dir=cache, log=None)
    assert not again.stats.from_cache and again.labels == [None, None, None, True, False, True]
    # a missing part is named, by the loader and by the config check
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=f"^{re.escape(missing)}: no such file or folder \\(in the list "):
        data_files(f"{pairs},{missing}")
    with pytest.raises(ConfigError, match=f"^--data {re.escape(pairs)},{re.escape(missing)}: {re.escape(missing)}: "
                                          "no such file or folder$"):
        validate(_cfg(tmp_path, tiny_model_dir, data=f"{pairs},{missing}"))
    validate(_cfg(tmp_path, tiny_model_dir, data=listed))
    # a path that exists as written is one path, commas and all
    odd = _write(tmp_path / "a,b.jsonl", _pairs(1))
    assert data_files(odd) == [odd]


def test_the_trainer_refuses_one_kind_losses_on_mixed_data_before_any_model(tmp_path, tiny_model_dir):
    """The kind check runs before the step plan: 1 unpaired example among pairs (less than a micro-batch)
    is named as the record of the wrong kind, not as too little data."""
    from minidpo.train import train

    data = _write(tmp_path / "mixed.jsonl", _pairs(8) + _unpaired(1))
    for loss_type, message in (("sigmoid", r"^mixed.jsonl:9: an unpaired example .*--loss_type sigmoid,kto$"),
                               ("kto", r"^mixed.jsonl:1: a preference pair, but loss_type kto .*sigmoid,kto$")):
        with pytest.raises(ConfigError, match=message):
            train(RunConfig(model=tiny_model_dir, data=data, output_dir=str(tmp_path / loss_type),
                            deepspeed=f"{ROOT}/ds_configs/zero2.json", loss_type=loss_type, batch_size=2,
                            max_length=64, max_prompt_length=32))
    with pytest.raises(ConfigError, match="^--data .*mixed.jsonl: only 1 unpaired examples: fewer than one step"):
        train(RunConfig(model=tiny_model_dir, data=data, output_dir=str(tmp_path / "mix"),
                        deepspeed=f"{ROOT}/ds_configs/zero2.json", loss_type="sigmoid,kto", batch_size=2,
                        max_length=64, max_prompt_length=32))


# ------------------------------------------------------------------------------------------- engine

@pytest.fixture(scope="module")
def vote_files(tmp_path_factory):
    """The app's two files: 16 pairs (runs/votes.jsonl) and 16 thumbs, half up (runs/votes_unpaired.jsonl)."""
    folder = tmp_path_factory.mktemp("runs")
    return _write(folder / "votes.jsonl", _pairs(16)), _write(folder / "votes_unpaired.jsonl", _unpaired(16))


def _train(tmp_path, name, model, data, **over) -> list[dict]:
    from minidpo.train import train

    kw = dict(model=model, data=data, output_dir=str(tmp_path / name), deepspeed=f"{ROOT}/ds_configs/zero2.json",
              learning_rate=1e-3, weight_decay=0.1, batch_size=4, grad_accum=2, epochs=2, log_interval=1,
              save_interval=0, group_by_length=False, max_length=64, max_prompt_length=32, beta=0.5,
              loss_type="sigmoid,kto")
    kw.update(over)
    train(RunConfig(**kw))
    with open(os.path.join(kw["output_dir"], "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _first_loss(row, pair_loss, kto_weight, wd, wu):
    """A step's loss at policy == reference (z = 0): each pair's `pair_loss`, each unpaired example half its
    label's weight, times kto's weight; the mean over the step's rows."""
    unpaired = row.get("kto/unpaired_share", 0.0)
    desirable = row.get("kto/desirable_share", 0.0)
    return (1 - unpaired) * pair_loss + unpaired * kto_weight * 0.5 * (wd * desirable + wu * (1 - desirable))


def _moved(output_dir, model_dir) -> bool:
    """Some exported weight differs from the initial model's by more than the export dtype's rounding."""
    from safetensors.torch import load_file

    trained = load_file(os.path.join(output_dir, "export/model.safetensors"))
    base = load_file(os.path.join(model_dir, "model.safetensors"))
    return any(not torch.equal(trained[k], base[k].to(trained[k].dtype)) for k in base)


@pytest.mark.slow
@pytest.mark.parametrize("over, pair_loss, first_unpaired_share", [
    # ZeRO-2, the shared-prompt forward, the batch KL, both files by --data's comma list; kto weighted 0.5;
    # seed 0 plans an unpaired then a pair micro-batch for step 1: its loss is the mean over both kinds' rows
    (dict(loss_weights=[1.0, 0.5], undesirable_weight=1.5, dtype="fp32", seed=0), LN2, 0.5),
    # LoRA with the adapter-off reference, IPO ((0 - 1 / (2 beta))^2 = 1 at step 0), two rows, a fixed z;
    # seed 1 starts with a micro-batch of pairs
    (dict(loss_type="ipo,kto", lora_r=4, lora_alpha=8.0, dtype="fp32", learning_rate=1e-2, shared_prompt=False,
          kto_kl="0", desirable_weight=1.33, grad_accum=1, seed=1), 1.0, 0.0),
])
def test_pairs_and_unpaired_examples_train_in_one_run_on_the_engine(tmp_path, tiny_model_dir, vote_files, over,
                                                                     pair_loss, first_unpaired_share):
    rows = _train(tmp_path, "mixed", tiny_model_dir, ",".join(vote_files), **over)
    kto_weight = (over.get("loss_weights") or [1.0, 1.0])[1]
    wd, wu = over.get("desirable_weight", 1.0), over.get("undesirable_weight", 1.0)
    steps = 2 * 32 // (4 * over.get("grad_accum", 2))  # each kind: 16 rows, 4 micro-batches of 4, no leftover
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert rows[0].get("kto/unpaired_share", 0.0) == first_unpaired_share
    assert rows[0]["loss"] == pytest.approx(_first_loss(rows[0], pair_loss, kto_weight, wd, wu), abs=1e-5)
    assert all(math.isfinite(r["loss"]) for r in rows)
    # both kinds' metrics, each over its own rows: as many pair rows as unpaired ones over the run
    with_pairs = [r for r in rows if "rewards/accuracies" in r]
    with_unpaired = [r for r in rows if "kto/rewards/desirable" in r]
    assert with_pairs and with_unpaired
    assert all(0 <= r["rewards/accuracies"] <= 1 for r in with_pairs)
    assert all(0 <= r["kto/accuracies"] <= 1 for r in with_unpaired)
    assert sum(r.get("kto/unpaired_share", 0.0) for r in rows) == pytest.approx(steps / 2)
    assert all(r["kl"] >= 0 for r in with_unpaired) and rows[0].get("kl", 0.0) == pytest.approx(0.0, abs=1e-5)
    # both kinds learn: the pairs' margins grow, the desirable completions end above the undesirable ones
    first, last = (sum(r["rewards/margins"] for r in part) / 2 for part in (with_pairs[:2], with_pairs[-2:]))
    assert last > first
    assert with_unpaired[-1]["kto/rewards/desirable"] > with_unpaired[-1]["kto/rewards/undesirable"]
    with open(tmp_path / "mixed/summary.json") as f:
        assert json.load(f)["trained"]["pairs"] == 64  # every row of both epochs: 2 x (16 pairs + 16 unpaired)
    assert _moved(str(tmp_path / "mixed"), tiny_model_dir)  # LoRA's export: the adapter merged in
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "mixed/tensorboard"))
    events.Reload()
    assert {"loss", "rewards/accuracies", "rewards/margins", "kto/rewards/desirable", "kto/rewards/undesirable",
            "kto/accuracies", "kl", "kto/unpaired_share"} <= set(events.Tags()["scalars"])


@pytest.mark.slow
def test_two_ranks_under_zero3_run_the_same_kind_at_each_micro_step(tmp_path, tiny_model_dir, vote_files):
    """torchrun, 2 ranks, ZeRO-3, one mixed file: a rank on the KTO path all-reduces the batch KL, so a rank
    on the pair path at the same time would hang the run; it finishes, each step's first loss is its hand value."""
    import subprocess
    import sys

    mixed = _write(tmp_path / "mixed.jsonl", [r for pair in zip(_pairs(16), _unpaired(16)) for r in pair])
    bindir = os.path.dirname(sys.executable)
    cmd = [f"{bindir}/torchrun", "--nproc_per_node", "2", "--master_port", "29651", "trainer/train_dpo.py",
           "--model", tiny_model_dir, "--data", mixed, "--deepspeed", "ds_configs/zero3.json", "--dtype", "fp32",
           "--loss_type", "sigmoid,kto", "--undesirable_weight", "1.5", "--learning_rate", "1e-3",
           "--max_steps", "6", "--log_interval", "1", "--save_interval", "0", "--max_length", "64",
           "--max_prompt_length", "32", "--beta", "0.5", "--batch_size", "2", "--group_by_length", "false",
           "--dist_timeout", "120", "--output_dir", str(tmp_path / "two")]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "two/metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0]["loss"] == pytest.approx(_first_loss(rows[0], LN2, 1.0, 1.0, 1.5), abs=1e-6)
    assert all(math.isfinite(r["loss"]) for r in rows)
    # grad_accum 1: each step is one kind on both ranks, its metrics that kind's only
    for r in rows:
        assert ("rewards/accuracies" in r) != ("kto/accuracies" in r)
    assert any("rewards/accuracies" in r for r in rows) and any("kl" in r for r in rows)


def test_a_resume_notices_a_changed_file_of_a_data_list(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"prompt": "q", "chosen": "x", "rejected": "y"}\n')
    b.write_text('{"prompt": "q", "completion": "x", "label": true}\n')
    before = content_hash(f"{a},{b}")
    assert before == content_hash(f"{a}, {b}") and before != content_hash(str(a))
    b.write_text('{"prompt": "q", "completion": "x", "label": false}\n')
    assert content_hash(f"{a},{b}") != before
