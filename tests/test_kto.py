"""KTO on unpaired examples: the loss against hand values, the unpaired data format and its errors, the
settings it refuses, and real DeepSpeed runs (ZeRO-2, and LoRA with the adapter-off reference)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from transformers import AutoTokenizer

from minidpo.config import RunConfig, validate
from minidpo.data import TokenizedPair, detect_format, load_preference_data
from minidpo.data.collate import kto_pairs
from minidpo.errors import ConfigError, DataError
from minidpo.losses import batch_kl, check_loss_settings, kto_loss, preference_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sig(x):
    return 1 / (1 + math.exp(-x))


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


# ------------------------------------------------------------------------------------------- the loss

def test_kto_loss_matches_hand_values_for_both_labels_and_weights():
    policy, ref = t(-3.0, -5.0, -2.0, -4.5), t(-3.5, -4.0, -2.0, -4.0)
    labels = torch.tensor([True, False, True, False])
    beta, z, wd, wu = 0.5, 0.3, 1.5, 0.7
    losses, rewards = kto_loss(policy, ref, labels, z, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    expected = []
    for p, r, good in zip([-3.0, -5.0, -2.0, -4.5], [-3.5, -4.0, -2.0, -4.0], [True, False, True, False]):
        ratio = p - r
        expected.append(wd * (1 - sig(beta * (ratio - z))) if good else wu * (1 - sig(beta * (z - ratio))))
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert rewards.tolist() == pytest.approx([0.25, -0.5, 0.0, -0.25], abs=1e-6)  # beta * log-ratio
    # at policy == reference with z = 0 every example's loss is half its label's weight
    losses, _ = kto_loss(ref, ref, labels, 0.0, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    assert losses.tolist() == pytest.approx([wd / 2, wu / 2, wd / 2, wu / 2], abs=1e-7)


def test_batch_kl_is_the_clamped_detached_mean_of_the_mismatched_log_ratios():
    policy = t(-3.0, -5.0, -2.0).requires_grad_()
    kl = batch_kl(policy, t(-3.4, -5.2, -2.3))
    assert kl.item() == pytest.approx((0.4 + 0.2 + 0.3) / 3) and not kl.requires_grad
    assert batch_kl(t(-3.0, -5.0), t(-2.0, -4.5)).item() == 0.0  # mean -0.75: clamped at 0
    # averaged over ranks before the clamp: this rank's -0.5 with another rank's +1.5 gives 0.5
    other_rank = torch.tensor(1.5, dtype=torch.float64)
    kl = batch_kl(t(-3.0), t(-2.5), lambda x: (x + other_rank) / 2)
    assert kl.item() == pytest.approx(0.5)
    # the batch KL enters the loss: a desirable example at log-ratio 1, beta 1, z = 0.9/3
    z = (0.4 + 0.2 + 0.3) / 3
    losses, _ = kto_loss(t(-1.0), t(-2.0), torch.tensor([True]), batch_kl(t(-3.0, -5.0, -2.0), t(-3.4, -5.2, -2.3)),
                         beta=1.0)
    assert losses.item() == pytest.approx(1 - sig(1.0 - z))


def test_gradients_raise_desirable_and_lower_undesirable_completions():
    policy = t(-3.0, -3.0).requires_grad_()
    losses, _ = kto_loss(policy, t(-3.0, -3.0), torch.tensor([True, False]), 0.0, beta=0.5)
    losses.sum().backward()
    assert policy.grad[0] < 0 < policy.grad[1]  # gradient descent raises log pi of the desirable one only
    # d/dr [1 - s(b r)] = -b s(br)(1 - s(br)) = -0.5 * 0.25 at r = 0
    assert policy.grad.tolist() == pytest.approx([-0.125, 0.125])


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss_type="kto,sft"), "kto mixes with a pairwise preference loss .*not with sft alone"),
    (dict(loss_type="kto", rpo_alpha=0.5), "rpo_alpha does not apply to loss_type kto alone"),
    (dict(loss_type="plackett_luce,kto"), "plackett_luce trains on listwise data and takes no other term"),
    (dict(loss_type="kto", ld_alpha=0.5), "ld_alpha only applies to loss_type"),
    (dict(loss_type="kto", use_weighting=True), "use_weighting does not apply to loss_type 'kto'"),
    (dict(loss_type="kto", label_smoothing=0.1), "label_smoothing only applies"),
])
def test_loss_settings_that_do_not_apply_to_kto(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_loss_settings(beta=0.1, **kwargs)


def test_preference_loss_refuses_kto():
    with pytest.raises(ValueError, match="use minidpo.losses.kto_loss"):
        preference_loss(t(-1.0), t(-2.0), t(-1.0), t(-2.0), beta=0.1, loss_type="kto")


# ------------------------------------------------------------------------------------------- settings

def _cfg(tmp_path, model_dir, **over):
    data = tmp_path / "votes.jsonl"
    data.write_text('{"prompt": "a", "completion": "b", "label": true}\n')
    kw = dict(model=model_dir, data=str(data), output_dir=str(tmp_path / "out"),
              deepspeed=os.path.join(ROOT, "ds_configs/zero2.json"), loss_type="kto")
    kw.update(over)
    return RunConfig(**kw)


@pytest.mark.parametrize("over, message", [
    (dict(loss_type="sigmoid", desirable_weight=2.0), "--desirable_weight only applies to loss_type kto"),
    (dict(loss_type="sigmoid", kto_kl="0.1"), "--kto_kl only applies to loss_type kto"),
    (dict(undesirable_weight=-1.0), "--undesirable_weight must be finite and >= 0"),
    (dict(kto_kl="mean"), '--kto_kl \'mean\': expected "batch" or a number'),
    (dict(precompute_ref=True), "--precompute_ref is not supported with loss_type kto"),
    (dict(max_tokens_per_batch=512), "--max_tokens_per_batch is not supported with loss_type kto"),
    (dict(sync_ref_model=True), "--sync_ref_model is not supported with loss_type kto"),
])
def test_run_settings_are_one_line_config_errors(tmp_path, tiny_model_dir, over, message):
    validate(_cfg(tmp_path, tiny_model_dir))
    validate(_cfg(tmp_path, tiny_model_dir, kto_kl="0.25", desirable_weight=1.33))
    with pytest.raises(ConfigError, match=message):
        validate(_cfg(tmp_path, tiny_model_dir, **over))


# ------------------------------------------------------------------------------------------- data

def _write(tmp_path, records, name="votes.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_unpaired_records_are_detected_and_tokenized_with_their_labels(tok, tmp_path):
    assert detect_format({"prompt": "q", "completion": "a", "label": False}) == "unpaired"
    records = [
        {"prompt": "What is 2 + 2?", "completion": "4.", "label": True, "meta": {"from": "arena"}},
        {"prompt": [{"role": "user", "content": "What is 2 + 3?"}],
         "completion": [{"role": "assistant", "content": "6."}], "label": False},
        {"prompt": "Hi", "completion": "Hello!", "label": False, "system": "Be brief."},
    ]
    path = _write(tmp_path, records)
    ds = load_preference_data(path, tok, max_length=64, cache_dir=str(tmp_path / "cache"), log=None)
    assert ds.stats.format == "unpaired" and ds.labels == [True, False, False]
    assert all(p.chosen_ids and p.rejected_ids == [] for p in ds)
    assert tok.decode(ds[1].chosen_ids).startswith("6.") and "2 + 3" in tok.decode(ds[1].prompt_ids)
    assert "Be brief." in tok.decode(ds[2].prompt_ids)
    cached = load_preference_data(path, tok, max_length=64, cache_dir=str(tmp_path / "cache"), log=None)
    assert cached.stats.from_cache and cached.labels == ds.labels


@pytest.mark.parametrize("record, message", [
    ({"prompt": "q", "completion": "a", "label": "yes"}, ':2: field "label": expected true .* got str'),
    ({"prompt": "q", "completion": "a", "label": 1}, ':2: field "label": expected true .* got int'),
    ({"prompt": "q", "completion": "  ", "label": True}, ':2: field "completion": expected a non-empty string'),
    ({"prompt": "q", "completion": [], "label": True}, ':2: field "completion": expected a non-empty list'),
    ({"prompt": "q", "completion": [{"role": "user", "content": "x"}], "label": True},
     ':2: field "completion\\[0\\].role": expected \'assistant\''),
])
def test_bad_unpaired_records_name_file_line_and_field(tmp_path, record, message):
    good = {"prompt": "q", "completion": "a", "label": True}
    with pytest.raises(DataError, match="votes.jsonl" + message):
        load_preference_data(_write(tmp_path, [good, record]), None, max_length=64, cache_dir=None, log=None)


def test_a_file_mixing_pairs_and_unpaired_records_loads_and_the_trainer_refuses_one_kind_losses(tmp_path, tok):
    """A mixed file is read, each record keeping its kind; a pairwise loss alone and kto alone refuse it in
    the trainer's kind check, naming file:line and the loss_type that takes both."""
    from minidpo.train import check_data_kind

    for records, first_other in (([{"prompt": "q", "chosen": "a", "rejected": "b"},
                                   {"prompt": "q", "completion": "a", "label": True}], "unpaired"),
                                 ([{"prompt": "q", "completion": "a", "label": True},
                                   {"prompt": "q", "chosen": "a", "rejected": "b"}], "pair")):
        ds = load_preference_data(_write(tmp_path, records, "mixed.jsonl"), tok, max_length=64, cache_dir=None,
                                  log=None)
        assert ds.labels == ([None, True] if first_other == "unpaired" else [True, None])
        assert ds.stats.format == ("prompt+unpaired" if first_other == "unpaired" else "unpaired+prompt")
        check_data_kind(RunConfig(loss_type="sigmoid,kto"), ds)
        if first_other == "unpaired":
            with pytest.raises(ConfigError, match=r"^mixed.jsonl:2: an unpaired example .*only loss_type kto .*"
                                                  r"--loss_type ipo,kto$"):
                check_data_kind(RunConfig(loss_type="ipo"), ds)
        else:
            with pytest.raises(ConfigError, match=r"^mixed.jsonl:2: a preference pair, but loss_type kto trains on "
                                                  r"unpaired examples only; .*--loss_type sigmoid,kto$"):
                check_data_kind(RunConfig(loss_type="kto"), ds)


def test_kto_rows_pair_each_prompt_with_the_previous_completion():
    examples = [TokenizedPair([1, 2], [10, 11], []), TokenizedPair([3], [20], []), TokenizedPair([4, 5, 6], [30], [])]
    rows = kto_pairs(examples, max_length=4)
    assert [(r.prompt_ids, r.chosen_ids, r.rejected_ids) for r in rows] == [
        ([1, 2], [10, 11], [30]), ([3], [20], [10, 11]), ([4, 5, 6], [30], [20])]
    assert kto_pairs(examples, max_length=3)[1].rejected_ids == [10, 11]
    assert kto_pairs(examples, max_length=3)[0].rejected_ids == [30]
    assert kto_pairs([TokenizedPair([1], [2, 3, 4], [])], max_length=3)[0].rejected_ids == [2, 3]  # cut to the room


# ------------------------------------------------------------------------------------------- engine

@pytest.fixture(scope="module")
def votes_file(tmp_path_factory):
    """32 unpaired answers to sums: the sum desirable, a refusal undesirable."""
    import random

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("votes") / "votes_unpaired.jsonl"
    with open(path, "w") as f:
        for i in range(32):
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            good = i % 2 == 0
            answer = f"{a} + {b} = {a + b}." if good else f"I do not know what {a} + {b} is."
            f.write(json.dumps({"prompt": f"What is {a} + {b}?", "completion": answer, "label": good}) + "\n")
    return str(path)


def _train(tmp_path, name, model, data, **over) -> list[dict]:
    from minidpo.train import train

    kw = dict(model=model, data=data, output_dir=str(tmp_path / name), deepspeed=f"{ROOT}/ds_configs/zero2.json",
              learning_rate=1e-3, weight_decay=0.1, batch_size=4, epochs=2, log_interval=1, save_interval=0,
              group_by_length=False,  # mixed labels in each batch (grouped by length they would not be)
              max_length=64, max_prompt_length=32, beta=0.5, loss_type="kto")
    kw.update(over)
    train(RunConfig(**kw))
    with open(os.path.join(kw["output_dir"], "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _first_loss(row, wd, wu):
    share = row["kto/desirable_share"]
    return 0.5 * (wd * share + wu * (1 - share))  # policy == reference and z = 0 at step 0


@pytest.mark.slow
@pytest.mark.parametrize("over", [
    dict(),  # ZeRO-2, the shared-prompt forward, the batch KL
    dict(shared_prompt=False, desirable_weight=1.0, undesirable_weight=1.5, kto_kl="0"),
    dict(lora_r=4, lora_alpha=8.0, dtype="fp32", learning_rate=1e-2, desirable_weight=1.33,  # adapter-off reference
         undesirable_weight=1.0),
])
def test_kto_trains_on_the_engine(tmp_path, tiny_model_dir, votes_file, over):
    rows = _train(tmp_path, "kto", tiny_model_dir, votes_file, **over)
    wd, wu = over.get("desirable_weight", 1.0), over.get("undesirable_weight", 1.0)
    assert 0 < rows[0]["kto/desirable_share"] < 1
    assert rows[0]["loss"] == pytest.approx(_first_loss(rows[0], wd, wu), abs=1e-5)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the mismatched pairs too are at policy == reference
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert len(rows) == 16
    # each step's loss relative to its value at policy == reference (the batches' label mixes differ), over
    # the first and the last 4 steps
    start, end = (sum(r["loss"] / _first_loss(r, wd, wu) for r in part) / 4 for part in (rows[:4], rows[-4:]))
    assert end < start - 0.05

    def mean_reward(part, side, share):  # over the examples of one label in the last 4 steps (16 examples)
        return sum(r[f"rewards/{side}"] * share(r) for r in part) / sum(share(r) for r in part)
    last = rows[-4:]
    desirable = mean_reward(last, "chosen", lambda r: r["kto/desirable_share"])
    undesirable = mean_reward(last, "rejected", lambda r: 1 - r["kto/desirable_share"])
    assert desirable > 0 > undesirable


def test_a_pairs_run_refuses_unpaired_data_and_kto_refuses_pairs(tmp_path, tok, votes_file):
    from minidpo.train import check_data_kind

    pairs = _write(tmp_path, [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(4)], "pairs.jsonl")
    unpaired, paired = (load_preference_data(f, tok, max_length=64, cache_dir=None, log=None)
                        for f in (votes_file, pairs))
    check_data_kind(RunConfig(loss_type="kto"), unpaired)
    check_data_kind(RunConfig(), paired)
    with pytest.raises(ConfigError, match=r"votes_unpaired.jsonl:1: an unpaired example .*only loss_type kto"):
        check_data_kind(RunConfig(), unpaired)
    with pytest.raises(ConfigError, match=r"pairs.jsonl:1: a preference pair, but loss_type kto"):
        check_data_kind(RunConfig(loss_type="kto"), paired)


@pytest.mark.slow
def test_two_ranks_under_zero3_average_the_batch_kl(tmp_path, tiny_model_dir, votes_file):
    """torchrun, 2 ranks, ZeRO-3: the batch KL is all-reduced every micro-step (a rank that skipped it
    would hang the other); every rank logs the same steps and the first loss is its hand value."""
    import subprocess
    import sys

    bindir = os.path.dirname(sys.executable)
    cmd = [f"{bindir}/torchrun", "--nproc_per_node", "2", "--master_port", "29650", "trainer/train_dpo.py",
           "--model", tiny_model_dir, "--data", votes_file, "--deepspeed", "ds_configs/zero3.json", "--dtype", "fp32",
           "--loss_type", "kto", "--undesirable_weight", "1.5", "--learning_rate", "1e-3", "--max_steps", "4",
           "--log_interval", "1", "--save_interval", "0", "--max_length", "64", "--max_prompt_length", "32",
           "--beta", "0.5", "--batch_size", "2", "--group_by_length", "false", "--output_dir", str(tmp_path / "two")]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "two/metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["loss"] == pytest.approx(_first_loss(rows[0], 1.0, 1.5), abs=1e-6)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and all(r["kl"] >= 0 for r in rows)
    assert all(math.isfinite(r["loss"]) for r in rows)
