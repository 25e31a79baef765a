"""minidpo.iterate --judge votes with every vote file the app writes: A/B pairs, thumbs and both bad
(unpaired examples, trained with kto added to the loss), ties (counted, no pair); malformed lines;
one real round on the tiny model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from app.votes import VoteWriter
from minidpo.data import load_preference_data
from minidpo.errors import ConfigError, DataError
from minidpo.eval import read_heldout
from minidpo.iterate import IterateConfig, iterate, read_votes
from minidpo.iterate.loop import main, train_command, votes_round
from minidpo.iterate.round_loss import round_run_config, unpaired_flags
from minidpo.models import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOY_TRAIN = ("--dtype fp32 --batch_size 2 --epochs 1 --learning_rate 1e-3 --log_interval 1 --save_interval 0 "
             "--export false --precompute_ref true")


def comparison(k: int, history=None) -> dict:
    return {"prompt": f"vote prompt {k}", "system": "Be brief." if k == 1 else "", "history": history or [],
            "answers": {"A": f"answer A{k}", "B": f"answer B{k}"}, "models": {"A": "DPO", "B": "SFT"},
            "order_seed": k, "settings": {}, "rewards": None, "battle": f"b{k}", "turn": 0}


def write_votes(folder: Path) -> Path:
    """Through the app's own writer: A better, B better (with a system prompt), a tie, both bad, a thumbs
    up and a thumbs down on a later turn of a conversation."""
    w = VoteWriter(folder / "votes.jsonl")
    w.append(w.record(comparison(0), "A", models={}, beta=0.5), battle=w.battle(comparison(0), "A"))
    w.append(w.record(comparison(1), "B", models={}, beta=0.5), battle=w.battle(comparison(1), "B"))
    w.append(battle=w.battle(comparison(2), "tie"))
    w.append(*[w.unpaired(comparison(3), side, False, vote="both_bad", models={}) for side in ("A", "B")],
             battle=w.battle(comparison(3), "both_bad"))
    w.append(w.unpaired(comparison(4), "A", True, vote="thumbs_up", models={}))
    earlier = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    w.append(w.unpaired(comparison(5, earlier), "B", False, vote="thumbs_down", models={}))
    return folder / "votes.jsonl"


def toy_pairs(path: Path, n: int = 20) -> str:
    path.write_text("".join(json.dumps({"prompt": f"data {i}", "chosen": f"good {i}", "rejected": f"bad {i}",
                                        "id": f"d{i}"}) + "\n" for i in range(n)), encoding="utf-8")
    return str(path)


def votes_config(tmp: Path, model: str, **over) -> IterateConfig:
    values = dict(model=model, sft_model=model, data=toy_pairs(tmp / "data.jsonl"), heldout="", judge="votes",
                  votes=str(tmp / "votes.jsonl"), votes_fraction=0.5, output_dir=str(tmp / "it"), rounds=1,
                  min_pairs=1, train_config="", launcher="python", eval_start=False, train_args=TOY_TRAIN)
    return IterateConfig(**{**values, **over})


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_vote_file_becomes_the_rounds_data(tmp_path, tiny_model_dir):
    write_votes(tmp_path)
    cfg = votes_config(tmp_path, tiny_model_dir)
    rd = tmp_path / "round_1"
    rd.mkdir()
    info = votes_round(cfg, 1, tiny_model_dir, read_heldout(cfg.data), rd)
    # 2 A/B votes + 4 unpaired examples = 6 vote records; at votes_fraction 0.5, 6 pairs from --data
    assert info["pairs"] == {"votes": 2, "original": 6, "pairs": 8, "unpaired": 4,
                             "unpaired_from": {"both_bad": 2, "thumbs_down": 1, "thumbs_up": 1},
                             "desirable": 1, "undesirable": 3, "battles": 4, "ties": 1, "both_bad": 1, "skipped": 0}
    assert info["train_flags"] == ["--loss_type", "sigmoid,kto", "--precompute_ref", "false"]
    got = lines(rd / "pairs.jsonl")
    stamps = [r["meta"]["timestamp"] for r in lines(tmp_path / "votes.jsonl")]
    assert [{**r, "meta": {k: v for k, v in r["meta"].items() if k != "timestamp"}} for r in got[:2]] == [
        {"prompt": "vote prompt 0", "chosen": "answer A0", "rejected": "answer B0",
         "meta": {"source": "votes", "winner": "dpo", "loser": "sft"}},
        {"prompt": "vote prompt 1", "chosen": "answer B1", "rejected": "answer A1", "system": "Be brief.",
         "meta": {"source": "votes", "winner": "sft", "loser": "dpo"}}]
    assert [r["meta"]["timestamp"] for r in got[:2]] == stamps
    drawn = sorted(random.Random(1).sample(range(20), 6))  # round 1 of seed 0: the draw from --data
    assert got[2:8] == [{"prompt": f"data {i}", "chosen": f"good {i}", "rejected": f"bad {i}",
                         "meta": {"source": "data", "id": f"d{i}"}} for i in drawn]
    unpaired = lines(tmp_path / "votes_unpaired.jsonl")
    assert got[8:] == [
        {"prompt": "vote prompt 3", "completion": "answer A3", "label": False,
         "meta": {"source": "votes_unpaired", "model": "DPO", "vote": "both_bad", "timestamp": unpaired[0]["meta"]["timestamp"]}},
        {"prompt": "vote prompt 3", "completion": "answer B3", "label": False,
         "meta": {"source": "votes_unpaired", "model": "SFT", "vote": "both_bad", "timestamp": unpaired[1]["meta"]["timestamp"]}},
        {"prompt": "vote prompt 4", "completion": "answer A4", "label": True,
         "meta": {"source": "votes_unpaired", "model": "DPO", "vote": "thumbs_up", "timestamp": unpaired[2]["meta"]["timestamp"]}},
        {"prompt": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                    {"role": "user", "content": "vote prompt 5"}],
         "completion": [{"role": "assistant", "content": "answer B5"}], "label": False,
         "meta": {"source": "votes_unpaired", "model": "SFT", "vote": "thumbs_down", "timestamp": unpaired[3]["meta"]["timestamp"]}}]
    assert json.loads((rd / "pairs.json").read_text()) == info
    # the trainer's reader takes the file as it is: 8 pairs, 4 unpaired examples with their labels
    data = load_preference_data(str(rd / "pairs.jsonl"), load_tokenizer(tiny_model_dir), max_length=128,
                                max_prompt_length=64)
    assert data.labels == [None] * 8 + [False, False, True, False]


def test_no_unpaired_votes_change_nothing(tmp_path, tiny_model_dir):
    w = VoteWriter(tmp_path / "votes.jsonl")
    w.append(w.record(comparison(0), "A", models={}, beta=0.5), battle=w.battle(comparison(0), "A"))
    w.append(battle=w.battle(comparison(2), "tie"))
    cfg = votes_config(tmp_path, tiny_model_dir, votes_fraction=1.0)
    rd = tmp_path / "round_1"
    rd.mkdir()
    info = votes_round(cfg, 1, tiny_model_dir, read_heldout(cfg.data), rd)
    assert info["train_flags"] == []  # the train config's loss as it is
    assert info["pairs"] == {"votes": 1, "original": 0, "pairs": 1, "unpaired": 0, "unpaired_from": {}, "desirable": 0,
                             "undesirable": 0, "battles": 2, "ties": 1, "both_bad": 0, "skipped": 0}
    assert [r["chosen"] for r in lines(rd / "pairs.jsonl")] == ["answer A0"]
    cmd = train_command(cfg, "m", "m", rd / "pairs.jsonl", rd / "dpo", resume=False, loss_flags=info["train_flags"])
    assert "--loss_type" not in cmd


def test_the_loss_type_of_a_round_with_unpaired_votes(tmp_path, tiny_model_dir):
    def flags(train_config="", train_args=""):
        return unpaired_flags(round_run_config(IterateConfig(train_config=train_config, train_args=train_args)))

    # the iterate demo config: sigmoid, rpo_alpha 1, precompute_ref (KTO scores the reference per batch)
    assert flags(str(ROOT / "configs/demo_iterate_dpo.yaml")) == ["--loss_type", "sigmoid,kto", "--precompute_ref", "false"]
    assert flags() == ["--loss_type", "sigmoid,kto"]
    assert flags(train_args="--loss_type ipo,sft --loss_weights 1,0.5") == \
        ["--loss_type", "ipo,sft,kto", "--loss_weights", "1,0.5,1"]  # one weight per term: kto's is 1
    assert flags(train_args="--loss_type sigmoid,kto") == []  # the train config mixes already
    with pytest.raises(ConfigError, match=r"^--judge votes: the rounds' loss_type kto .* trains unpaired examples only"):
        flags(train_args="--loss_type kto")
    with pytest.raises(ConfigError, match=r"^--judge votes: the rounds' loss_type plackett_luce .* trains lists"):
        flags(train_args="--loss_type plackett_luce")
    # the flags come after train_args in the trainer's command, so they win
    cfg = IterateConfig(train_config="", train_args="--precompute_ref true", launcher="python")
    cmd = train_command(cfg, "m", "m", Path("d.jsonl"), Path("o"), resume=True,
                        loss_flags=["--loss_type", "sigmoid,kto", "--precompute_ref", "false"])
    assert cmd[-8:] == ["--precompute_ref", "true", "--loss_type", "sigmoid,kto", "--precompute_ref", "false",
                        "--resume", "true"]


@pytest.mark.parametrize("name, text, message", [
    ("votes_unpaired.jsonl", '{"prompt": "p", "completion": "c", "label": true}\n{"prompt": "p", "completion": "c", '
     '"label": "yes"}\n', 'votes_unpaired.jsonl:2: field "label": expected true'),
    ("votes_unpaired.jsonl", '{"prompt": "p", "completion": "c", "label": true, "meta": []}\n',
     'votes_unpaired.jsonl:1: field "meta": expected an object'),
    ("votes_battles.jsonl", '{"outcome": "tie"}\n\n{"outcome": "draw"}\n',
     "votes_battles.jsonl:3: field \"outcome\": expected one of A, B, tie, both_bad, got 'draw'"),
    ("votes_battles.jsonl", '{"outcome": "tie"}\n{"outcome": \n', "votes_battles.jsonl:2: malformed JSON"),
    ("votes.jsonl", '{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "completion": "c", '
     '"label": false}\n', 'votes.jsonl:2: field "label": an unpaired example in the votes file'),
    ("votes.jsonl", '{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n',
     'votes.jsonl:2: field "rejected": missing'),
])
def test_a_malformed_vote_line_names_file_line_and_field(tmp_path, tiny_model_dir, name, text, message):
    write_votes(tmp_path)
    (tmp_path / name).write_text(text, encoding="utf-8")
    cfg = votes_config(tmp_path, tiny_model_dir)
    with pytest.raises(DataError) as err:
        read_votes(cfg)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_malformed_vote_line_is_one_error_line_from_the_command_line(tmp_path, tiny_model_dir, capsys):
    write_votes(tmp_path)
    with open(tmp_path / "votes_battles.jsonl", "a", encoding="utf-8") as f:
        f.write('{"battle": "b9", "outcome": "A wins"}\n')
    with pytest.raises(SystemExit) as stop:
        main(["--judge", "votes", "--votes", str(tmp_path / "votes.jsonl"), "--model", tiny_model_dir,
              "--sft_model", tiny_model_dir, "--data", toy_pairs(tmp_path / "data.jsonl"), "--heldout", "",
              "--train_config", "", "--output_dir", str(tmp_path / "it"), "--deepspeed", str(ROOT / "ds_configs/zero2.json")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: votes_battles.jsonl:5: field \"outcome\": expected one of A, B, tie, both_bad, got 'A wins'"


def test_votes_settings(tmp_path, tiny_model_dir):
    write_votes(tmp_path)
    (tmp_path / "votes.jsonl").unlink()  # thumbs and both bad alone are votes enough
    cfg = votes_config(tmp_path, tiny_model_dir)
    assert [len(v) for v in (read_votes(cfg).pairs, read_votes(cfg).unpaired)] == [0, 4]
    assert cfg.votes_beside("unpaired") == str(tmp_path / "votes_unpaired.jsonl")
    assert cfg.votes_beside("battles") == str(tmp_path / "votes_battles.jsonl")
    (tmp_path / "votes_unpaired.jsonl").rename(tmp_path / "thumbs.jsonl")
    with pytest.raises(ConfigError, match=r"--votes .*votes.jsonl: no such file, nor .*votes_unpaired.jsonl"):
        iterate(cfg)
    with pytest.raises(ConfigError, match=r"--votes_unpaired .*nothing.jsonl: no such file"):
        iterate(votes_config(tmp_path, tiny_model_dir, votes_unpaired=str(tmp_path / "nothing.jsonl")))
    moved = votes_config(tmp_path, tiny_model_dir, votes_unpaired=str(tmp_path / "thumbs.jsonl"))
    assert len(read_votes(moved).unpaired) == 4
    with pytest.raises(ConfigError, match="--listwise true needs a judge that scores answers"):
        iterate(votes_config(tmp_path, tiny_model_dir, votes_unpaired=str(tmp_path / "thumbs.jsonl"), listwise=True))


# ------------------------------------------------------------------------------- one real round, toy size
def test_one_votes_round_trains_pairs_and_unpaired_votes(tmp_path, tiny_model_dir):
    """Needs the trainer's loss_type sigmoid,kto on a file mixing pairs and unpaired examples."""
    write_votes(tmp_path)
    cfg = votes_config(tmp_path, tiny_model_dir)
    summary = iterate(cfg)
    assert summary["stopped"] is None and [r["round"] for r in summary["rounds"]] == [1]
    rd = tmp_path / "it" / "round_1"
    run = json.loads((rd / "dpo" / "run_config.json").read_text())["run"]
    assert run["loss_type"] == ["sigmoid", "kto"] and run["precompute_ref"] is False
    assert run["data"] == str(rd / "pairs.jsonl")
    row = summary["rounds"][0]
    assert row["pairs"]["unpaired"] == 4 and row["pairs"]["ties"] == 1 and row["train"]["steps"] >= 1
    table = (tmp_path / "it" / "summary.md").read_text()
    assert "| 1 | round 1 | 8 + 4 unpaired (0) |" in table
    assert ("- round 1: 2 A/B votes and 6 pairs from --data; 4 unpaired examples (2 from both-bad votes, 1 thumbs up, "
            "1 thumbs down; 1 desirable, 3 undesirable), trained with kto; battles file: 1 ties (no pair: a tie "
            "prefers neither answer), 1 both bad (their answers are the unpaired file's both-bad examples)") in table
