"""The bench: its workload and FLOP count by hand, its numerics check, and a real run of all four
trainers (minidpo, minidpo with LoRA, TRL, the MiniMind-style loop) at tiny settings. Speeds are the bench's business, not
the tests': here only that it runs, counts right and that the three trainers agree."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from minidpo.bench.__main__ import check_numerics
from minidpo.bench.flops import dpo_pair_flops, matmul_params, sequence_forward_flops
from minidpo.bench.workload import EOS_ID, Workload, build, check_tokenization, generate_pairs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_workload_lengths_follow_the_spec_and_are_deterministic():
    w = Workload()
    pairs = generate_pairs(w)
    assert pairs == generate_pairs(Workload())
    assert len(pairs) == 256
    prompts = sorted(len(p) for p, _, _ in pairs)
    answers = sorted(len(a) for _, c, r in pairs for a in (c, r))
    assert 56 <= prompts[128] <= 72 and 84 <= answers[256] <= 108  # medians 64 and 96
    assert max(answers) <= 384 and max(answers) >= 300  # a long tail
    assert all(len(p) + max(len(c), len(r)) <= 512 for p, c, r in pairs)
    assert all(c[-1] == EOS_ID and r[-1] == EOS_ID and EOS_ID not in p for p, c, r in pairs)
    assert generate_pairs(Workload(pairs=16)) == pairs[:16]  # a smaller bench is a prefix of the full one


def test_skewed_workload_is_mostly_short_with_a_long_tail():
    from minidpo.bench.workload import skewed_workload

    pairs = generate_pairs(skewed_workload())
    rows = sorted(len(p) + len(c) + len(r) for p, c, r in pairs)
    assert len(rows) == 512 and 90 <= rows[256] <= 150  # the median packed row ~120 tokens
    long = [x for x in rows if x > 500]
    assert 0.03 <= len(long) / len(rows) <= 0.08 and rows[-1] > 1200  # ~5% ten times longer
    assert all(len(p) + max(len(c), len(r)) <= 1024 for p, c, r in pairs)


def test_every_pipeline_sees_the_generated_token_ids(tmp_path):
    """minidpo's data loader turns the workload's text back into exactly the generated ids."""
    from transformers import AutoTokenizer

    from minidpo.data import load_preference_data

    w = Workload(model="tiny", pairs=12)
    paths = build(w, str(tmp_path))
    data = load_preference_data(paths["data"], AutoTokenizer.from_pretrained(paths["model"]), max_length=512,
                                max_prompt_length=256, cache_dir=None)
    check_tokenization(w, [data[i] for i in range(len(data))])
    with pytest.raises(AssertionError, match="first at pair 3"):
        wrong = [(p, c, r) for p, c, r in generate_pairs(w)]
        wrong[3] = (wrong[3][0], wrong[3][1][1:], wrong[3][2])
        check_tokenization(w, wrong)


def test_flops_by_hand():
    cfg = dict(vocab_size=100, hidden_size=8, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=16)
    # per layer: q, o 8x8; k, v 8x4 (2 KV heads of size 2); MLP 3 x 8x16 -> 128 + 64 + 384 = 576; head 800
    assert matmul_params(cfg) == 2 * 576 + 800
    assert sequence_forward_flops(cfg, 10) == 2 * 1952 * 10 + 2 * 2 * 8 * 100
    assert dpo_pair_flops(cfg, 3, 4, 7) == 4 * (sequence_forward_flops(cfg, 7) + sequence_forward_flops(cfg, 10))


def test_numerics_check_names_the_trainer_and_step():
    ln2 = math.log(2)
    good = {"minidpo": {"losses": [ln2, 0.60]}, "trl": {"losses": [ln2, 0.6001]}}
    assert check_numerics(good, 1e-3) == []
    bad = {"minidpo": {"losses": [ln2, 0.60]}, "trl": {"losses": [0.7, 0.65]}}
    problems = check_numerics(bad, 1e-3)
    assert any("trl: step-0 loss 0.70000 is not ln 2" in p for p in problems)
    assert any("trl: step-1 loss 0.65000 differs from minidpo's 0.60000" in p for p in problems)


@pytest.mark.slow
def test_bench_runs_all_three_trainers_and_they_agree(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "minidpo.bench", "--model", "tiny", "--pairs", "16", "--rounds", "1",
           "--threads", "1", "--dtype", "fp32", "--check-steps", "2", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert report["check"]["problems"] == []
    for name, losses in report["check"]["losses"].items():
        assert len(losses) == 2 and losses[0] == pytest.approx(math.log(2), abs=1e-5)
        if name != "minidpo-lora":  # LoRA updates other parameters: only its start is the same
            assert losses[1] == pytest.approx(report["check"]["losses"]["minidpo"][1], abs=1e-4)
    # the adapter's first update moved the model (LoRA's B starts at zero, so until then every loss is ln 2);
    # the second step's loss is on another batch, so it may lie on either side of ln 2
    assert abs(report["check"]["losses"]["minidpo-lora"][1] - math.log(2)) > 1e-4
    r = report["results"]
    assert set(r) == {"minidpo", "minidpo-simpo", "minidpo-lora", "trl", "naive"}
    assert set(report["check"]["losses"]) == {"minidpo", "minidpo-lora", "trl", "naive"}  # SimPO is another objective
    simpo = json.loads((out / "run_round0_minidpo-simpo" / "run_config.json").read_text())["run"]
    assert (simpo["loss_type"], simpo["beta"], simpo["precompute_ref"]) == ("simpo", 2.0, False)
    for row in r.values():
        assert row["pairs"] == 16 and row["pairs_per_s"] > 0 and 0 < row["mfu"] < 2 and row["peak_rss_gb"] > 0.1
    # padding: the MiniMind-style loop pads every pair to max_length, TRL to the batch's longest, minidpo packs
    assert r["naive"]["computed_positions"] == 16 * 2 * 512
    assert r["naive"]["padding_fraction"] > r["trl"]["padding_fraction"] > r["minidpo"]["padding_fraction"]
    assert r["trl"]["pairs_per_s_vs_trl"] == 1.0
    table = (out / "bench.md").read_text()
    assert "| minidpo, LoRA r=16" in table
    assert "| minidpo |" in table and "| TRL DPOTrainer |" in table and "peak RSS" in table and "losses agree" in table
    assert "| minidpo, SimPO (no reference model) |" in table


@pytest.mark.slow
def test_bench_skewed_workload_runs_the_token_budget(tmp_path):
    """--workload skewed: fixed batches of 4 against a token budget, on the same pairs; the budget's
    micro-batches never exceed it (except a pair alone), so its largest forward is smaller."""
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "minidpo.bench", "--model", "tiny", "--workload", "skewed", "--pairs", "48",
           "--trainers", "minidpo,minidpo-budget", "--token-budget", "512", "--rounds", "1", "--threads", "1",
           "--dtype", "fp32", "--check-steps", "2", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert report["workload"]["long_fraction"] == 0.05 and report["settings"]["max_length"] == 1024
    r = report["results"]
    assert r["minidpo"]["pairs"] == r["minidpo-budget"]["pairs"] == 48  # one epoch, every pair (one rank)
    assert r["minidpo-budget"]["padding_fraction"] < r["minidpo"]["padding_fraction"]
    budget = json.loads((out / "run_round0_minidpo-budget" / "run_config.json").read_text())["run"]
    assert budget["max_tokens_per_batch"] == 512
    assert report["check"]["losses"]["minidpo-budget"][0] == pytest.approx(math.log(2), abs=1e-5)
    assert "token budget 512 positions" in (out / "bench.md").read_text()


def test_bench_refuses_unknown_trainers(tmp_path):
    done = subprocess.run([sys.executable, "-m", "minidpo.bench", "--trainers", "minidpo,axolotl",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "unknown ['axolotl']" in done.stderr


# ------------------------------------------------------------------------------ the listwise rows

def test_lists_follow_the_pairs_spread_and_their_pairs_are_every_two_answers():
    from minidpo.bench.workload import LIST_K, PAIRS_PER_LIST, generate_lists, list_pairs

    w = Workload()
    lists = generate_lists(w)
    assert lists == generate_lists(Workload()) and len(lists) == 256 // 6 and (LIST_K, PAIRS_PER_LIST) == (4, 6)
    assert all(len(answers) == 4 and all(a[-1] == EOS_ID for a in answers) and EOS_ID not in p for p, answers in lists)
    assert all(len(p) + max(map(len, answers)) <= 512 for p, answers in lists)
    answers = sorted(len(a) for _, ans in lists for a in ans)
    assert 70 <= answers[len(answers) // 2] <= 125  # median 96 (168 draws)
    pairs = list_pairs(w)
    assert len(pairs) == 6 * len(lists)
    p, (a, b, c, d) = lists[1]
    assert pairs[6:12] == [(p, a, b), (p, a, c), (p, a, d), (p, b, c), (p, b, d), (p, c, d)]  # best first
    assert generate_lists(Workload(pairs=5)) == lists[:1]  # at least one list


def test_list_work_is_a_third_of_its_pairs_work_by_hand():
    """Each answer of a K=4 list is in 3 of its 6 pairs: the lists' FLOPs and useful tokens (each
    [prompt, answer] once) are a third of the same data trained as pairs; a list counts 6 pairs."""
    from minidpo.bench.__main__ import unit_work
    from minidpo.bench.flops import list_flops
    from minidpo.bench.workload import generate_lists, list_pairs

    cfg = dict(vocab_size=100, hidden_size=8, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=16)
    assert list_flops(cfg, 3, [4, 7]) == dpo_pair_flops(cfg, 3, 4, 7)
    assert list_flops(cfg, 3, [4, 7, 1]) == 4 * sum(sequence_forward_flops(cfg, 3 + a) for a in (4, 7, 1))
    w = Workload(model="tiny", pairs=60)
    lists, pairs = generate_lists(w), list_pairs(w)
    flops, tokens, per_list = unit_work("minidpo-listwise", w)
    pair_flops, pair_tokens, per_pair = unit_work("minidpo-listwise-pairs", w)
    assert (per_list, per_pair, len(lists), len(pairs)) == (6, 1, 10, 60)
    assert pair_flops * len(pairs) == pytest.approx(3 * flops * len(lists))
    assert pair_tokens * len(pairs) == pytest.approx(3 * tokens * len(lists))
    assert tokens * len(lists) == sum(4 * len(p) + sum(map(len, answers)) for p, answers in lists)


def test_listwise_rows_train_the_lists_and_their_pairs(tmp_path):
    """The rows' settings, and the files they read: the lists with scores 3..0 and the same lists as
    pairs, both tokenized back to the generated ids."""
    from transformers import AutoTokenizer

    from minidpo.bench.settings import listwise_settings
    from minidpo.bench.workload import generate_lists, list_pairs
    from minidpo.data import load_preference_data

    w = Workload(model="tiny", pairs=12)
    paths = build(w, str(tmp_path))
    assert listwise_settings("minidpo-listwise", paths) == {
        "data": paths["lists"], "loss_type": "listwise_pairs", "precompute_ref": False}
    assert listwise_settings("minidpo-listwise-pairs", paths) == {"data": paths["list_pairs"]}  # as minidpo
    tok = AutoTokenizer.from_pretrained(paths["model"])
    lists = load_preference_data(paths["lists"], tok, max_length=512, cache_dir=None, log=None)
    assert [(r.prompt_ids, r.answer_ids, r.scores) for r in lists] == \
        [(p, answers, [3.0, 2.0, 1.0, 0.0]) for p, answers in generate_lists(w)]
    pairs = load_preference_data(paths["list_pairs"], tok, max_length=512, cache_dir=None, log=None)
    assert [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs] == list_pairs(w)


@pytest.mark.slow
def test_bench_runs_the_listwise_row_and_its_pairs_twin(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "minidpo.bench", "--model", "tiny", "--pairs", "24", "--rounds", "1",
           "--trainers", "minidpo-listwise,minidpo-listwise-pairs", "--threads", "1", "--dtype", "fp32",
           "--check-steps", "2", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert report["check"]["problems"] == []
    losses = report["check"]["losses"]  # 4 lists: one step; their 24 pairs: 6 steps of 4
    assert losses["minidpo-listwise"] == [pytest.approx(math.log(2), abs=1e-5)]
    assert len(losses["minidpo-listwise-pairs"]) == 2
    assert losses["minidpo-listwise-pairs"][0] == pytest.approx(math.log(2), abs=1e-5)
    r = report["results"]
    assert r["minidpo-listwise"]["pairs"] == r["minidpo-listwise-pairs"]["pairs"] == 24  # 4 lists x 6 pairs
    assert report["targets"] == {}  # other data than the targets are about
    for name, loss_type, precompute_ref, data in (("minidpo-listwise", "listwise_pairs", False, "lists.jsonl"),
                                                  ("minidpo-listwise-pairs", "sigmoid", True, "list_pairs.jsonl")):
        run = json.loads((out / f"run_round0_{name}" / "run_config.json").read_text())["run"]
        assert (run["loss_type"], run["batch_size"], run["precompute_ref"]) == (loss_type, 4, precompute_ref)
        assert run["data"].endswith(data)
    table = (out / "bench.md").read_text()
    assert "| minidpo, K=4 lists, one row each (listwise_pairs) |" in table
    assert "| minidpo, the same lists as 6 pairs each (sigmoid) |" in table and "Listwise rows: 4 lists of 4" in table
