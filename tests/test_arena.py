"""The pool (run folders, lazy loading, eviction), any two side by side, the arena's votes of every kind,
regenerate and multi-turn, thumbs, the leaderboard over arena votes, and the offline judge CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `app/` lives at the repo root

from conftest import build_tiny_model_dir  # noqa: E402

from app.arena import main as arena_main  # noqa: E402
from app.arena import outcome  # noqa: E402
from app.handlers import Comparer  # noqa: E402
from app.pool import Pool, model_bytes, pool_sources, short_names  # noqa: E402
from minidpo.data import encode_prompt_response, load_preference_data  # noqa: E402
from minidpo.errors import ModelError  # noqa: E402
from minidpo.scoring import implicit_rewards  # noqa: E402

SETTINGS = (10, 0.8, 0.95, 40, 1.1, 3)  # max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A runs folder as training leaves it: an SFT export, a DPO run with a checkpoint export."""
    root = tmp_path_factory.mktemp("runs")
    build_tiny_model_dir(root / "sft" / "export", seed=0)
    build_tiny_model_dir(root / "dpo" / "export", seed=1)
    build_tiny_model_dir(root / "dpo" / "checkpoints" / "step_00000002" / "hf", seed=2)
    (root / "dpo" / "export.partial").mkdir()  # an interrupted export is not a model
    return root


@pytest.fixture(scope="module")
def pool(runs):
    return Pool(pool_sources([str(runs)]), device="cpu")


@pytest.fixture
def comparer(pool, tmp_path):
    return Comparer(pool=pool, pair=("sft", "dpo"), beta=0.1, votes_path=tmp_path / "votes.jsonl")


def lines(path):
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines()] if Path(path).exists() else []


def test_a_run_folder_joins_the_pool_with_short_names(runs):
    sources = pool_sources([str(runs)])
    assert sources == {"dpo/step_00000002": str(runs / "dpo/checkpoints/step_00000002/hf"),
                       "dpo": str(runs / "dpo/export"), "sft": str(runs / "sft/export")}
    named = pool_sources([f"base={runs / 'sft/export'}", str(runs / "dpo/export")])
    assert named == {"base": str(runs / "sft/export"), "dpo": str(runs / "dpo/export")}
    assert short_names(["a/x/export", "b/x/export", "m.gguf"]) == ["a/x", "b/x", "m"]
    with pytest.raises(ModelError, match="no such file or folder"):
        pool_sources([str(runs / "nope")])


def test_the_default_pair_is_sft_against_the_newest(runs):
    from app.compare import parse_args, pool_and_pair

    sources, pair = pool_and_pair(parse_args(["--models", str(runs)]))
    assert pair == ("sft", "dpo/step_00000002")  # the checkpoint export was written last
    sources, pair = pool_and_pair(parse_args(["--models", str(runs), "--sft", str(runs / "sft/export"),
                                              "--dpo", str(runs / "dpo/export")]))
    assert pair == ("SFT", "DPO") and set(sources) == {"SFT", "DPO", "dpo/step_00000002"}


def test_the_pool_loads_lazily_and_evicts_beyond_its_budget(runs):
    sources = pool_sources([str(runs)])
    probe = Pool(sources, device="cpu")
    size = model_bytes(probe.get("sft"))
    pool = Pool(sources, budget_bytes=2.5 * size, device="cpu")  # room for two models
    assert pool.loaded == []
    sft = pool.get("sft")
    pool.get("dpo")
    assert pool.loaded == ["sft", "dpo"] and pool.evictions == 0
    pool.get("dpo/step_00000002", keep=("dpo",))  # the least recently used (sft) goes
    assert pool.loaded == ["dpo", "dpo/step_00000002"] and pool.evictions == 1
    assert pool.loaded_bytes() <= 2.5 * size
    assert pool.get("sft", keep=("dpo",)) is not sft and pool.loaded == ["dpo", "sft"]  # loaded again
    with pytest.raises(ModelError, match="no model named"):
        pool.get("other")


def test_side_by_side_any_two_of_the_pool(comparer, pool):
    *_, (left_text, right_text, left_stats, right_stats, status) = comparer.compare(
        "Explain photosynthesis", "", *SETTINGS, left="dpo/step_00000002", right="sft")
    assert status.startswith("**Done.**") and "The sft model prefers the" in status
    assert "β·log(πsft/πdpo/step_00000002)" in left_stats
    left, right = pool.get("dpo/step_00000002"), pool.get("sft")
    r = implicit_rewards(right.model, left.model, left.tokenizer, [{"role": "user", "content": "Explain photosynthesis"}],
                         [left_text, right_text], 0.1)
    assert f"{r[0].item():+.3f}" in left_stats and f"{r[1].item():+.3f}" in right_stats


def battle(comparer, order_seed, prompt="Explain photosynthesis", **kw):
    *_, (a, b, status, comparison) = comparer.blind(prompt, "Be brief.", *SETTINGS, order_seed=order_seed, **kw)
    assert comparison is not None, status
    return comparison


def test_arena_votes_of_every_kind(comparer):
    drawn = {tuple(battle(comparer, s)["models"].values()) for s in range(8)}
    assert len(drawn) >= 4 and all(a != b for a, b in drawn)  # random pairs and orders of the pool of three

    c = battle(comparer, 1)
    status, voted = comparer.vote(c, "A")
    assert status.startswith("**Vote saved**") and f"A was **{c['models']['A']}**, B was **{c['models']['B']}**" in status
    pair = lines(comparer.votes_path)[-1]
    assert (pair["chosen"], pair["rejected"]) == (c["answers"]["A"], c["answers"]["B"])
    assert pair["meta"]["winner"] == c["models"]["A"].lower() and pair["meta"]["battle"] == c["battle"]

    c = battle(comparer, 2)
    comparer.vote(c, "tie")
    assert len(lines(comparer.votes_path)) == 1  # a tie is no training data

    c = battle(comparer, 3)
    status, _ = comparer.vote(c, "both_bad")
    assert "both are bad" in status
    assert len(lines(comparer.votes_path)) == 1  # the votes file holds only pairs: the trainer reads it as it is
    bad = lines(comparer.votes.unpaired_path)
    assert [(x["completion"], x["label"], x["meta"]["model"]) for x in bad] == [
        (c["answers"]["A"], False, c["models"]["A"]), (c["answers"]["B"], False, c["models"]["B"])]
    assert all(set(x) == {"prompt", "completion", "label", "system", "meta"} and x["prompt"] == "Explain photosynthesis"
               and x["system"] == "Be brief." for x in bad)

    status, _ = comparer.vote(battle(comparer, 4), "skip")
    assert status.startswith("Skipped")
    battles = lines(comparer.votes.battles_path)
    assert [b["outcome"] for b in battles] == ["A", "tie", "both_bad"]
    assert all(b["judge"] == "person" and set(b["tokens"]) == {"A", "B"} for b in battles)

    pairs_only = comparer.votes_path.with_name("pairs.jsonl")
    pairs_only.write_text(json.dumps(pair) + "\n", encoding="utf-8")
    ds = load_preference_data(pairs_only, comparer.sft.tokenizer, max_length=512, cache_dir=None, log=None)
    assert len(ds) == 1

    table, heatmap = comparer.board(rounds=20)
    assert "95% interval" in table and "3 battles" in table and all(n in table for n in ("sft", "dpo"))
    assert "wins of" in heatmap


def test_regenerate_and_a_conversation_with_a_vote_per_turn(comparer):
    first = battle(comparer, 5)
    again = battle(comparer, None, previous=first, regenerate=True)
    assert again["models"] == first["models"] and again["settings"]["seed"] == SETTINGS[-1] + 1
    assert again["battle"] == first["battle"] and again["turn"] == 0

    with pytest.warns(UserWarning, match="Vote on this turn first"):
        list(comparer.blind("And in winter?", "", *SETTINGS, previous=first))
    _, first = comparer.vote(first, "B")
    second = battle(comparer, None, prompt="And in winter?", previous=first)
    assert second["models"] == first["models"] and second["turn"] == 1 and second["battle"] == first["battle"]
    assert second["history"] == [{"role": "user", "content": "Explain photosynthesis"},
                                 {"role": "assistant", "content": first["answers"]["B"]}]
    comparer.vote(second, "A")
    rec = lines(comparer.votes_path)[-1]
    assert rec["prompt"] == [{"role": "system", "content": "Be brief."}, *second["history"],
                             {"role": "user", "content": "And in winter?"}]
    assert rec["chosen"] == [{"role": "assistant", "content": second["answers"]["A"]}]
    # the votes file as it is (turn 1 in the plain form, turn 2 in TRL's conversational form) is training data
    ds = load_preference_data(comparer.votes_path, comparer.sft.tokenizer, max_length=512, cache_dir=None, log=None)
    want_prompt, want_chosen = encode_prompt_response(comparer.sft.tokenizer, rec["prompt"], second["answers"]["A"])
    assert len(ds) == 2 and ds[1].prompt_ids == want_prompt and ds[1].chosen_ids == want_chosen
    turn1, _ = encode_prompt_response(comparer.sft.tokenizer, [{"role": "system", "content": "Be brief."},
                                                              {"role": "user", "content": "Explain photosynthesis"}],
                                      first["answers"]["B"])
    assert ds[0].prompt_ids == turn1


def test_thumbs_on_a_side_by_side_answer(comparer):
    with pytest.warns(UserWarning, match="Compare first"):
        comparer.thumb("A", False)
    *_, (left_text, right_text, *_) = comparer.compare("Explain photosynthesis", "", *SETTINGS)
    assert comparer.thumb("A", False).startswith("**Thumbs down saved**")
    assert comparer.thumb("B", True).startswith("**Thumbs up saved**")
    with pytest.warns(UserWarning, match="already has your thumb"):
        comparer.thumb("B", True)
    down, up = lines(comparer.votes.unpaired_path)
    assert not comparer.votes_path.exists()
    assert (down["completion"], down["label"], down["meta"]["model"]) == (left_text, False, "sft")
    assert (up["completion"], up["label"], up["meta"]["vote"]) == (right_text, True, "thumbs_up")
    assert not comparer.votes.battles_path.exists()  # thumbs are no battle


def test_judge_outcomes():
    assert outcome(1.0, 0.0) == "A" and outcome(0.2, 0.7) == "B"
    assert outcome(0.0, 0.0) == "both_bad" and outcome(1.0, 1.0) == "tie"
    assert outcome(0.55, 0.5, margin=0.1) == "tie" and outcome(-1.0, -2.0, bad_at_most=-0.5) == "A"


class LengthJudge:
    """A judge for the test: the longer answer is better; an answer of fewer than 3 characters is bad."""

    def score(self, prompt_messages, answer, record):
        return float(len(answer)) if len(answer) >= 3 else 0.0


def length_judge(cfg):
    return LengthJudge()


def test_a_judge_plays_the_pool_offline(runs, tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": "x", "rejected": "y"}) + "\n"
                            for p in ("Explain photosynthesis", "How do I sleep better?", "光合作用")), encoding="utf-8")
    votes = tmp_path / "judged.jsonl"
    code = arena_main(["--models", str(runs), "--judge", "test_arena:length_judge", "--data", str(data), "--n", "6",
                       "--max_new_tokens", "8", "--votes", str(votes), "--device", "cpu", "--pool_memory_gb", "0"])
    assert code == 0, capsys.readouterr().err
    battles = lines(votes.with_name("judged_battles.jsonl"))
    assert 0 < len(battles) <= 6 and all(b["judge"] == "test_arena:length_judge" for b in battles)
    pairs = [r for r in lines(votes) if "chosen" in r]  # the judge's votes: the longer answer wins
    assert len(pairs) == sum(b["outcome"] in ("A", "B") for b in battles) > 0
    assert all(len(p["chosen"]) > len(p["rejected"]) for p in pairs)
    out = capsys.readouterr().out
    assert "votes ->" in out and all(n in out for n in ("sft", "dpo"))
    assert arena_main(["--models", str(runs / "nope"), "--judge", "rule", "--data", str(data)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
