"""minidpo.iterate listwise: true: all of a prompt's scored answers as one listwise record (the verifier's
edited answer joins the list), the round's loss (listwise_pairs / plackett_luce), one real round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minidpo.data import load_preference_data
from minidpo.errors import ConfigError
from minidpo.eval import HeldoutPair
from minidpo.iterate import IterateConfig, ScoredList, ScoredPrompt, iterate, lists_from_scores, verify_lists
from minidpo.iterate.lists import write_lists
from minidpo.iterate.round_loss import listwise_flags, round_loss_flags, round_run_config
from minidpo.iterate.verifier import prompt_score
from minidpo.models import load_tokenizer
from test_iterate import reward_model_dir, toy_data  # noqa: F401 (reward_model_dir: fixture)

ROOT = Path(__file__).resolve().parents[1]
DEMO_TRAIN = str(ROOT / "configs/demo_iterate_dpo.yaml")


def rec(i):
    return HeldoutPair([{"role": "user", "content": f"question {i}"}], "c", "r", id=f"q{i}", axis="language", lang="en")


def test_lists_keep_every_scored_answer():
    groups = [
        ScoredPrompt(rec(0), ["a0", "a1", "a2", "a3"], [0.2, 0.9, -1.0, 0.5]),   # all four, in sampling order
        ScoredPrompt(rec(1), ["b0", "b1", "b2"], [1.0, 1.0, 1.0]),               # all equal: skipped
        ScoredPrompt(rec(2), ["c0", "c1", "c2"], [None, 3.0, None]),             # one score: skipped
        ScoredPrompt(rec(3), ["d0", "  ", "d2", "d3"], [1.0, 0.0, None, 0.0]),   # the empty and the unscored left out
        ScoredPrompt(rec(4), ["same", "same "], [1.0, 0.0]),                     # one text: nothing to rank
        ScoredPrompt(rec(5), ["e0", "e0", "e1"], [1.0, 1.0, 0.0]),               # ties inside a list are kept
    ]
    lists, counts = lists_from_scores(groups)
    assert lists == [
        ScoredList(rec(0).prompt_messages, ["a0", "a1", "a2", "a3"], [0.2, 0.9, -1.0, 0.5], {"source": "samples", "id": "q0"}),
        ScoredList(rec(3).prompt_messages, ["d0", "d3"], [1.0, 0.0], {"source": "samples", "id": "q3"}),
        ScoredList(rec(5).prompt_messages, ["e0", "e0", "e1"], [1.0, 1.0, 0.0], {"source": "samples", "id": "q5"})]
    assert counts == {"prompts": 6, "lists": 3, "skipped": 3, "all_equal": 1, "unscored": 1, "same_text": 1,
                      "empty_answers": 1}


def ifeval_rec(key, ids):
    return HeldoutPair([{"role": "user", "content": f"prompt {key}"}], "", "", id=key, axis=ids[0].split(":")[0],
                       lang="en", meta={"instruction_id_list": ids, "kwargs": [{} for _ in ids]})


def test_verify_lists_with_the_margin_and_the_edited_answer():
    two = ["punctuation:no_comma", "startend:quotation"]
    three = ["punctuation:no_comma", "startend:quotation", "detectable_format:title"]
    groups = [
        ScoredPrompt(ifeval_rec(0, two), ['"a b"', "x, y", '"c, d"'], [1.0, 0.0, 0.5]),  # a sample passes: no edit
        ScoredPrompt(ifeval_rec(1, two), ["p, q", "r, s"], [0.0, 0.0]),                   # all equal; the edit fixes it
        ScoredPrompt(ifeval_rec(2, three), ['"u, v"', "w, z"], [1 / 3, 0.0]),            # below the margin; edited to 1.0
        ScoredPrompt(ifeval_rec(3, ["length_constraints:number_words"]), ["a", "b"], [0.0, 0.0]),  # no edit applies
    ]
    lists, counts = verify_lists(groups, margin=0.5, edit=False)
    assert [(x.meta["id"], x.responses, x.scores) for x in lists] == [(0, ['"a b"', "x, y", '"c, d"'], [1.0, 0.0, 0.5])]
    assert (counts["lists"], counts["from_samples"], counts["all_equal"], counts["below_margin"], counts["skipped"]) == \
        (1, 1, 2, 1, 3)

    lists, counts = verify_lists(groups, margin=0.5, edit=True)
    got = {x.meta["id"]: x for x in lists}
    assert sorted(got) == [0, 1, 2]
    assert got[1].responses == ["p, q", "r, s", '"p q"'] and got[1].scores == [0.0, 0.0, 1.0]
    assert got[2].responses == ['"u, v"', "w, z", '"<<U V>>\n\n"u v""'] and got[2].scores[2] == 1.0
    assert (got[1].meta["source"], got[1].meta["edited"], got[1].meta["unedited_score"]) == ("edit", two, 0.0)
    for x in lists:  # every score, the edit's too, is the verifier's score of that answer
        assert x.scores == [prompt_score(groups[x.meta["id"]].record, a) for a in x.responses]
    assert (counts["lists"], counts["from_samples"], counts["from_edits"], counts["edits_tried"], counts["all_equal"]) \
        == (3, 1, 2, 2, 1)


def test_list_records_are_what_the_trainer_reads(tmp_path, tiny_model_dir):
    lists = [ScoredList([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q0"}], ["a", "b", "c"],
                        [1.0, 0.5, 0.0], {"source": "samples", "id": 0}),
             ScoredList([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                         {"role": "user", "content": "q1"}], ["x", "y"], [0.0, 2.0], {"source": "samples", "id": 1})]
    write_lists(tmp_path / "pairs.jsonl", lists)
    assert [json.loads(line) for line in open(tmp_path / "pairs.jsonl", encoding="utf-8")] == [
        {"prompt": "q0", "system": "Be brief.", "responses": ["a", "b", "c"], "scores": [1.0, 0.5, 0.0],
         "meta": {"source": "samples", "id": 0}},
        {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "q1"}], "responses": ["x", "y"], "scores": [0.0, 2.0],
         "meta": {"source": "samples", "id": 1}}]
    data = load_preference_data(str(tmp_path / "pairs.jsonl"), load_tokenizer(tiny_model_dir), max_length=128,
                                max_prompt_length=64)
    assert [len(row.answer_ids) for row in data] == [3, 2] and [row.scores for row in data] == [[1.0, 0.5, 0.0], [0.0, 2.0]]


def test_the_loss_type_of_a_listwise_round(tmp_path, tiny_model_dir):
    def flags(train_config="", train_args=""):
        return listwise_flags(round_run_config(IterateConfig(train_config=train_config, train_args=train_args)))

    # the demo config's DPO becomes listwise_pairs; its NLL term does not fit K-answer rows (a precomputed
    # reference does: one column per answer)
    assert flags(DEMO_TRAIN) == ["--loss_type", "listwise_pairs", "--rpo_alpha", "0"]
    assert flags(train_args="--loss_type plackett_luce") == []
    assert flags(train_args="--loss_type listwise_pairs --precompute_ref true") == []
    for pairwise in ("hinge", "sigmoid,sft"):
        with pytest.raises(ConfigError, match=rf"^--listwise true: the rounds' loss_type {pairwise} .* is pairwise only"):
            flags(train_args=f"--loss_type {pairwise}")
    # what the trainer itself refuses for a listwise loss is one line too, before anything is sampled
    data = toy_data(tmp_path / "data.jsonl")
    cfg = IterateConfig(model=tiny_model_dir, sft_model=tiny_model_dir, data=data, heldout="", listwise=True,
                        train_config="", train_args="--loss_type plackett_luce --sync_ref_model true",
                        output_dir=str(tmp_path / "it"), deepspeed=str(ROOT / "ds_configs/zero2.json"))
    with pytest.raises(ConfigError, match=r"^listwise rounds train with the train config as it is, which the trainer "
                                          r"refuses: --sync_ref_model is not supported with loss_type plackett_luce"):
        round_loss_flags(cfg, "lists", model=tiny_model_dir, data=data)
    with pytest.raises(ConfigError, match="is pairwise only"):
        iterate(IterateConfig(**{**cfg.to_dict(), "train_args": "--loss_type ipo"}))
    assert not (tmp_path / "it" / "round_1").exists()


# ------------------------------------------------------------------------------- one real round, toy size
def test_one_listwise_round_trains_on_every_scored_answer(tmp_path, tiny_model_dir, reward_model_dir):  # noqa: F811
    data = toy_data(tmp_path / "data.jsonl")
    out = tmp_path / "it"
    summary = iterate(IterateConfig(
        model=tiny_model_dir, sft_model=tiny_model_dir, data=data, heldout="", output_dir=str(out), rounds=1,
        samples_per_prompt=3, prompts_per_round=-1, max_new_tokens=8, sample_batch_size=8, judge="reward_model",
        reward_model=reward_model_dir, listwise=True, min_pairs=4, launcher="python", eval_start=False,
        train_config=DEMO_TRAIN, train_args="--batch_size 2 --epochs 1 --learning_rate 1e-3 --log_interval 1 "
                                            "--save_interval 0 --export false"))
    rd = out / "round_1"
    samples = [json.loads(line) for line in open(rd / "samples.jsonl", encoding="utf-8")]
    lists = [json.loads(line) for line in open(rd / "pairs.jsonl", encoding="utf-8")]
    info = json.loads((rd / "pairs.json").read_text())
    # one list per prompt whose scores differ: every non-empty answer with its reward-model score
    expected = [{"prompt": s["prompt"][-1]["content"], "responses": [a for a in s["answers"] if a.strip()],
                 "scores": [x for a, x in zip(s["answers"], s["scores"]) if a.strip()], "meta": {"source": "samples", "id": s["id"]}}
                for s in samples if len({x for a, x in zip(s["answers"], s["scores"]) if a.strip()}) > 1]
    assert lists == expected and len(lists) == info["pairs"]["lists"] >= 4
    assert "pairs" not in info["pairs"] and info["pairs"]["prompts"] == 12
    assert info["train_flags"] == ["--loss_type", "listwise_pairs", "--rpo_alpha", "0"]  # reference precomputed: one column an answer
    run = json.loads((rd / "dpo" / "run_config.json").read_text())["run"]
    assert (run["loss_type"], run["rpo_alpha"], run["precompute_ref"]) == ("listwise_pairs", 0.0, True)
    row = summary["rounds"][0]
    assert summary["stopped"] is None and row["train"]["steps"] >= 1 and row["pairs"]["lists"] == len(lists)
    table = (out / "summary.md").read_text()
    assert "| round | policy | lists (skipped) |" in table and f"| 1 | round 1 | {len(lists)} (" in table
