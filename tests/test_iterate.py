"""minidpo.iterate: pairs from scores, the reward-model judge, votes as pairs, two real rounds, resume mid-round."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minidpo.eval import HeldoutPair, read_heldout
from minidpo.iterate import IterateConfig, RewardModelJudge, ScoredPrompt, iterate, pairs_from_scores, votes_pairs
from minidpo.iterate.pairs import write_pairs

ROOT = Path(__file__).resolve().parents[1]


def rec(i, lang="en"):
    return HeldoutPair([{"role": "user", "content": f"question {i}"}], "c", "r", id=f"q{i}", axis="language", lang=lang)


def test_pairs_best_vs_worst_ties_skipped_and_counted():
    groups = [
        ScoredPrompt(rec(0), ["a0", "a1", "a2", "a3"], [0.2, 0.9, -1.0, 0.5]),   # best a1, worst a2
        ScoredPrompt(rec(1), ["b0", "b1", "b2"], [1.0, 1.0, 1.0]),               # all equal: skipped
        ScoredPrompt(rec(2), ["c0", "c1", "c2"], [None, 3.0, None]),             # one score: skipped
        ScoredPrompt(rec(3), ["d0", "d1", "d2", "d3"], [1.0, 0.0, 1.0, 0.0]),    # ties at both ends: first of each
        ScoredPrompt(rec(4), ["e0", "  ", "e2"], [0.5, 0.0, 0.5]),               # the empty answer takes no part
        ScoredPrompt(rec(5), ["f0", "f1"], [None, -2.0]),
    ]
    pairs, counts = pairs_from_scores(groups)
    assert [(p.chosen, p.rejected) for p in pairs] == [("a1", "a2"), ("d0", "d1")]
    assert pairs[0].prompt_messages == rec(0).prompt_messages and pairs[0].meta["id"] == "q0"
    assert (pairs[0].meta["chosen_score"], pairs[0].meta["rejected_score"]) == (0.9, -1.0)
    assert counts.to_dict() == {"prompts": 6, "pairs": 2, "skipped": 4, "all_equal": 2, "unscored": 2,
                                "same_text": 0, "empty_answers": 1}


def tiny_reward_model(path, tokenizer_dir, seed=3):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model.eval()


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_model_dir):
    path = tmp_path_factory.mktemp("rm")
    tiny_reward_model(path, tiny_model_dir)
    return str(path)


def test_reward_model_judge_batched_equals_direct_forward(reward_model_dir):
    from transformers import AutoModelForSequenceClassification

    judge = RewardModelJudge(reward_model_dir, batch_size=2)
    items = [([{"role": "user", "content": "Say hi."}], "Hi there, nice to meet you!", None),
             ([{"role": "system", "content": "Be short."}, {"role": "user", "content": "光合作用是什么？"}], "植物用光。", None),
             ([{"role": "user", "content": "12 + 7?"}], "19", None)]
    scores = judge.score_batch(items)  # batches of 2 and 1, left padded
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    for (messages, answer, _), got in zip(items, scores):
        ids = judge.ids(messages, answer)
        assert answer in judge.tokenizer.decode(ids)  # prompt + answer, as the trainer tokenizes a pair
        with torch.no_grad():
            direct = model(input_ids=torch.tensor([ids])).logits[0, 0].item()  # the row alone, no padding
        assert got == pytest.approx(direct, abs=1e-5)
    assert len(set(round(s, 6) for s in scores)) == 3  # three different answers, three different scores
    assert judge.score(*items[2]) == pytest.approx(scores[2], abs=1e-5)


def test_votes_become_pairs_mixed_with_the_data(tmp_path, tiny_model_dir):
    from app.votes import VoteWriter
    from minidpo.data import load_preference_data
    from minidpo.models import load_tokenizer

    writer = VoteWriter(tmp_path / "votes.jsonl")
    for k, choice in enumerate(["A", "B", "A"]):
        comparison = {"prompt": f"vote prompt {k}", "system": "", "answers": {"A": f"answer A{k}", "B": f"answer B{k}"},
                      "models": {"A": "DPO", "B": "SFT"}, "order_seed": k, "settings": {}, "rewards": None}
        writer.append(writer.record(comparison, choice, models={}, beta=0.5))
    originals = [HeldoutPair([{"role": "user", "content": f"data {i}"}], f"good {i}", f"bad {i}", id=i) for i in range(20)]
    votes = read_heldout(tmp_path / "votes.jsonl")
    import random

    pairs, counts = votes_pairs(votes, originals, 0.25, random.Random(0))  # 3 votes = 1/4: 9 original pairs
    assert counts == {"votes": 3, "original": 9, "pairs": 12}
    assert [(p.prompt_messages[-1]["content"], p.chosen, p.rejected) for p in pairs[:3]] == [
        ("vote prompt 0", "answer A0", "answer B0"), ("vote prompt 1", "answer B1", "answer A1"),
        ("vote prompt 2", "answer A2", "answer B2")]
    assert [p.meta["winner"] for p in pairs[:3]] == ["dpo", "sft", "dpo"]
    assert all(p.meta["source"] == "data" and p.chosen == f"good {p.meta['id']}" for p in pairs[3:])
    assert len({p.meta["id"] for p in pairs[3:]}) == 9
    assert votes_pairs(votes, originals, 1.0, random.Random(0))[1] == {"votes": 3, "original": 0, "pairs": 3}
    # the round's pair file is one the trainer reads
    write_pairs(tmp_path / "pairs.jsonl", pairs)
    data = load_preference_data(str(tmp_path / "pairs.jsonl"), load_tokenizer(tiny_model_dir), max_length=128,
                                max_prompt_length=64)
    assert len(data) == 12 and data.stats.summary()


# ------------------------------------------------------------------------------- real rounds, toy size
def toy_data(path: Path, n=12) -> str:
    lines = []
    for i in range(n):
        lang = "en" if i % 2 else "zh"
        prompt = f"Tell me about thing number {i}." if lang == "en" else f"讲讲第{i}个东西。"
        lines.append(json.dumps({"prompt": prompt, "chosen": "A good answer.", "rejected": "A bad one.",
                                 "axis": "language", "lang": lang, "id": f"toy-{i}"}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def toy_config(tmp: Path, model: str, rm: str, out: str) -> dict:
    data = toy_data(tmp / "data.jsonl")
    return dict(model=model, sft_model=model, data=data, heldout=data, output_dir=out, rounds=2,
                samples_per_prompt=2, prompts_per_round=-1, max_new_tokens=8, sample_batch_size=8, judge="reward_model",
                reward_model=rm, train_config="", launcher="python", min_pairs=4, eval_n_generate=4, eval_n_kl=4,
                eval_max_new_tokens=8, eval_start=False,
                train_args="--dtype fp32 --batch_size 2 --epochs 3 --learning_rate 1e-3 --save_interval 3 "
                           "--log_interval 1 --export false --precompute_ref true")


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, tiny_model_dir, reward_model_dir):
    tmp = tmp_path_factory.mktemp("iterate")
    values = toy_config(tmp, tiny_model_dir, reward_model_dir, str(tmp / "it"))
    summary = iterate(IterateConfig(**values))
    return tmp, values, summary


def test_round_two_trains_on_pairs_sampled_from_round_one(two_rounds):
    from minidpo.generation import SamplingSettings
    from minidpo.iterate.sampling import sample_shard

    tmp, values, summary = two_rounds
    it = Path(values["output_dir"])
    r1_export, r2 = str(it / "round_1" / "dpo" / "export"), it / "round_2"
    for k in (1, 2):  # each round is a normal run folder with its evaluation
        run = it / f"round_{k}" / "dpo"
        for name in ("run_config.json", "summary.json", "metrics.jsonl", "export/config.json", "checkpoints/latest"):
            assert (run / name).exists(), name
        assert any((run / "tensorboard").iterdir())
        assert (it / f"round_{k}" / "eval" / "eval.json").is_file()
    run2 = json.loads((r2 / "dpo" / "run_config.json").read_text())["run"]
    assert run2["model"] == r1_export and run2["data"] == str(r2 / "pairs.jsonl")
    assert run2["ref_model"] is None  # reference=previous: round 1's export is policy and reference
    # round 2's answers are round 1's export's: sampled again here, they are the same
    samples = [json.loads(line) for line in open(r2 / "samples.jsonl", encoding="utf-8")]
    info = json.loads((r2 / "pairs.json").read_text())
    assert info["policy"] == r1_export
    again = sample_shard(r1_export, [s["prompt"] for s in samples], 2, SamplingSettings(**info["sampling"]), 8)
    assert again == [s["answers"] for s in samples]
    start = sample_shard(values["model"], [s["prompt"] for s in samples], 2, SamplingSettings(**info["sampling"]), 8)
    assert start != again  # the starting model would have answered otherwise
    # its pairs are best vs worst of those answers by the judge's scores, none from the original data
    pairs = [json.loads(line) for line in open(r2 / "pairs.jsonl", encoding="utf-8")]
    original = {json.loads(line)["chosen"] for line in open(values["data"], encoding="utf-8")}
    assert len(pairs) == info["pairs"]["pairs"] >= values["min_pairs"]
    by_prompt = {s["prompt"][-1]["content"]: s for s in samples}
    for p in pairs:
        s = by_prompt[p["prompt"]]
        assert p["chosen"] == s["answers"][s["scores"].index(max(s["scores"]))] not in original
        assert p["rejected"] == s["answers"][s["scores"].index(min(s["scores"]))]
    # the summary by round, in JSON, Markdown and TensorBoard (x axis = round)
    rows = json.loads((it / "summary.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == [1, 2] and summary["stopped"] is None
    assert all(r["eval"]["kl_from_sft"] is not None and "language" in r["eval"]["judged"] for r in rows)
    assert rows[0]["train"]["steps"] == 18 and rows[1]["seconds"]["sample"] > 0 and rows[1]["seconds"]["train"] > 0
    assert "| 2 | round 2 |" in (it / "summary.md").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(it / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("iterate/kl_from_sft")] == [1, 2]


def test_too_few_pairs_stop_the_loop(tmp_path, tiny_model_dir, reward_model_dir):
    class Constant:  # every answer the same score: every prompt a tie
        def score(self, prompt_messages, answer, record):
            return 1.0

    values = toy_config(tmp_path, tiny_model_dir, reward_model_dir, str(tmp_path / "it"))
    summary = iterate(IterateConfig(**{**values, "judge": "rule"}), judge=Constant())
    assert summary["rounds"] == [] and "round 1 has 0 pairs" in summary["stopped"]
    assert json.loads((tmp_path / "it" / "round_1" / "pairs.json").read_text())["pairs"]["all_equal"] == 12
    assert not (tmp_path / "it" / "round_1" / "dpo").exists()


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


def test_interrupted_in_round_two_resumes_to_the_same_state(two_rounds, tmp_path):
    from safetensors.torch import load_file

    import shutil

    tmp, values, _ = two_rounds
    it = tmp_path / "it"
    it.mkdir()
    shutil.copytree(Path(values["output_dir"]) / "round_1", it / "round_1")  # round 1 done: the same as above
    (tmp_path / "cfg.json").write_text(json.dumps({**values, "output_dir": str(it)}))
    cmd = [sys.executable, "-m", "minidpo.iterate", "--config", str(tmp_path / "cfg.json")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run2 = it / "round_2" / "dpo"
    deadline = time.time() + 120
    while not (run2 / "checkpoints" / "latest").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the iteration and its trainer, mid-way through round 2's DPO
    proc.wait()
    assert (run2 / "checkpoints" / "latest").is_file() and not (run2 / "summary.json").exists(), \
        "round 2's DPO finished before the kill: the test did not interrupt it"
    stopped_at = (run2 / "checkpoints" / "latest").read_text().strip()
    round1, pairs2 = _digest(it / "round_1"), (it / "round_2" / "pairs.jsonl").read_bytes()

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "round 1: finished before" in done.stdout and f"resuming from {stopped_at}" in done.stdout
    assert _digest(it / "round_1") == round1 and (it / "round_2" / "pairs.jsonl").read_bytes() == pairs2
    row = json.loads((it / "round_2" / "round.json").read_text())
    assert row["train"]["resumed_from"] == stopped_at and row["train"]["steps"] == 18
    # the same as the run that was never interrupted: same pairs, same weights
    assert row["policy"] == str(Path(values["output_dir"]) / "round_1" / "dpo" / "export")
    ref = Path(values["output_dir"]) / "round_2"
    assert pairs2 == (ref / "pairs.jsonl").read_bytes()
    got, want = load_file(it / "round_2/dpo/export/model.safetensors"), load_file(ref / "dpo/export/model.safetensors")
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4)


def test_continuing_with_other_settings_is_refused(two_rounds):
    from minidpo.errors import ConfigError

    _, values, _ = two_rounds
    with pytest.raises(ConfigError, match=r"other settings \(samples_per_prompt: 2 -> 3\)"):
        iterate(IterateConfig(**{**values, "samples_per_prompt": 3}))
    assert iterate(IterateConfig(**values))["rounds"][1]["round"] == 2  # same settings: both rounds finished before


def test_sampling_split_over_two_processes_equals_one(tiny_model_dir):
    from minidpo.generation import SamplingSettings
    from minidpo.iterate.sampling import sample_answers

    prompts = [[{"role": "user", "content": f"Tell me about thing number {i}."}] for i in range(5)]
    settings = SamplingSettings(max_new_tokens=6, temperature=1.0, top_p=1.0, seed=7)
    one = sample_answers(tiny_model_dir, prompts, 2, settings, batch_size=4, nproc=1)
    two = sample_answers(tiny_model_dir, prompts, 2, settings, batch_size=4, nproc=2)  # prompts 0,2,4 and 1,3
    assert two == one and all(len(a) == 2 for a in one) and one[0][0] != one[0][1]
