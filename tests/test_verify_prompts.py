"""minidpo.verify.prompts: our own constraint prompts, deterministic, compatible, with a held-out split."""

from __future__ import annotations

import json
import re
import string

import pytest

from minidpo.errors import ConfigError
from minidpo.verify import INSTRUCTIONS, parse_record
from minidpo.verify import tasks as T
from minidpo.verify.constraints import CONFLICTS, EXCLUSIVE, KINDS
from minidpo.verify.prompts import _consistent, generate, main, split_phrasings, split_tasks


def _as_regex(template: str) -> re.Pattern:
    parts = [re.escape(literal) + (".+?" if field is not None else "")
             for literal, field, _, _ in string.Formatter().parse(template)]
    return re.compile("".join(parts), re.DOTALL)


@pytest.fixture(scope="module")
def train():
    return generate(600, "train", 0)


@pytest.fixture(scope="module")
def heldout():
    return generate(150, "heldout", 0)


def test_every_kind_has_phrasings_and_a_held_out_one():
    assert set(KINDS) == set(INSTRUCTIONS)
    for kind in KINDS.values():
        assert len(kind.phrasings) >= 4 and len(set(kind.phrasings)) == len(kind.phrasings)
    assert len(T.TASKS) >= 60 and len(set(T.TASKS)) == len(T.TASKS)


def test_seeded_and_deterministic():
    first = [r.to_json() for r in generate(40, "train", 3)]
    assert first == [r.to_json() for r in generate(40, "train", 3)]
    assert first != [r.to_json() for r in generate(40, "train", 4)]


def test_records_are_valid_ifeval_input(train, heldout):
    for record in train + heldout:
        parsed = parse_record(record.to_json(), "generated")
        assert 1 <= len(parsed.instruction_id_list) <= 3
        assert len(set(parsed.instruction_id_list)) == len(parsed.instruction_id_list)
    assert len({r.prompt for r in train}) == len(train)
    assert len({r.key for r in train + heldout}) == len(train) + len(heldout)


def test_constraints_are_compatible(train):
    for record in train:
        ids = record.instruction_id_list
        for a in ids:
            for b in ids:
                assert a == b or frozenset((a, b)) not in CONFLICTS, record.prompt
        for group in EXCLUSIVE:
            assert len(group & set(ids)) <= 1, record.prompt
        task = record.prompt.split("? ")[0] if "detectable_format:constrained_response" in ids else None
        if task is not None:
            assert task + "?" in T.QUESTIONS
        args = dict(zip(ids, record.kwargs))
        if "keywords:forbidden_words" in args and "keywords:existence" in args:
            forbidden = set(args["keywords:forbidden_words"]["forbidden_words"])
            assert not forbidden & set(args["keywords:existence"]["keywords"])
        if "combination:repeat_prompt" in args:
            assert record.prompt.startswith(args["combination:repeat_prompt"]["prompt_to_repeat"])


def test_every_kind_is_drawn(train, heldout):
    assert {k for r in train for k in r.instruction_id_list} == set(INSTRUCTIONS)
    assert {k for r in heldout for k in r.instruction_id_list} == set(INSTRUCTIONS)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_each_split_uses_only_its_tasks_and_phrasings(train, heldout, split):
    records = train if split == "train" else heldout
    tasks, questions = split_tasks(split)
    for record in records:
        assert any(record.prompt.startswith(task + " ") for task in tasks + questions), record.prompt
        for kind in record.instruction_id_list:
            assert any(_as_regex(p).search(record.prompt) for p in split_phrasings(kind, split)), (kind, record.prompt)


def test_held_out_tasks_and_phrasings_are_never_trained_on():
    train_tasks, train_questions = split_tasks("train")
    held_tasks, held_questions = split_tasks("heldout")
    assert held_tasks and held_questions
    assert not set(held_tasks + held_questions) & set(train_tasks + train_questions)
    assert set(held_tasks) | set(train_tasks) == set(T.TASKS)
    for kind in KINDS:
        assert not set(split_phrasings(kind, "heldout")) & set(split_phrasings(kind, "train"))


def test_tasks_have_no_commas_so_they_can_be_repeated():
    assert all("," not in task for task in T.TASKS + T.QUESTIONS)


def test_no_ifeval_wording():
    # IFEval's prompts are the benchmark: distinctive sentences of its own must not appear in ours.
    ifeval = ["First repeat the request word for word without change", "refrain from the use of any commas",
              "Is there anything else I can help with?", "Any other questions?",
              "wrapped in double angular brackets, such as <<poem of joy>>",
              "Your ENTIRE response should be in", "Highlight at least", "Answer with one of the following options"]
    text = json.dumps({k.id: k.phrasings for k in KINDS.values()}) + json.dumps(T.END_PHRASES)
    for phrase in ifeval:
        assert phrase.lower() not in text.lower()


def test_consistency_rules():
    forbidden = {"forbidden_words": ["river"]}
    assert not _consistent("Describe a lake.", ["keywords:existence", "keywords:forbidden_words"],
                           [{"keywords": ["river"]}, forbidden])
    assert not _consistent("Describe a river.", ["keywords:forbidden_words"], [forbidden])
    capped_z = {"letter": "z", "let_frequency": 2, "let_relation": "less than"}
    assert not _consistent("Describe a lake.", ["keywords:letter_frequency", "startend:end_checker"],
                           [capped_z, {"end_phrase": "Stay zen."}])
    assert _consistent("Describe a lake.", ["keywords:forbidden_words"], [forbidden])


def test_cli_writes_both_splits(tmp_path, capsys):
    out = tmp_path / "prompts"
    main(["--out", str(out), "--n_train", "25", "--n_heldout", "7", "--seed", "5"])
    train_text = (out / "train.jsonl").read_text()
    assert len(train_text.splitlines()) == 25 and len((out / "heldout.jsonl").read_text().splitlines()) == 7
    assert "wrote" in capsys.readouterr().out
    main(["--out", str(out), "--n_train", "25", "--n_heldout", "7", "--seed", "5"])
    assert (out / "train.jsonl").read_text() == train_text
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(out), "--n_train", "-1"])
    assert exit_info.value.code == 2
    assert "error: --n_train -1" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        generate(1, "test", 0)
