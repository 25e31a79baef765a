"""python -m minidpo.demo.refusals: refusals of harmful and harmless prompts, counted by the demo's rule."""

from __future__ import annotations

import json

import pytest

from minidpo.demo.refusals import main, read_jsonl, refusal_counts
from minidpo.errors import DataError

REFUSE, COMPLY = "I'm sorry, I can't help with that.", "Sure, here is how: 1. Open it. 2. Clean it. 3. Close it."


def test_eval_answers_split_harmful_and_harmless():
    rows = [{"axis": "refusal", "sft": COMPLY, "dpo": REFUSE},
            {"axis": "refusal", "sft": REFUSE, "dpo": REFUSE},
            {"axis": "structure", "sft": COMPLY, "dpo": REFUSE},   # an over-refusal
            {"axis": "fact", "sft": "A cat is an animal.", "dpo": "A cat is an animal."},
            {"axis": "language", "sft": "Sorry, but sure, here is how.", "dpo": COMPLY}]  # goes along: no refusal
    counts = refusal_counts(rows)
    assert counts["sft"] == {"harmful": (1, 2), "harmless": (0, 3)}
    assert counts["dpo"] == {"harmful": (2, 2), "harmless": (1, 3)}


def test_response_files_are_all_harmless(tmp_path, capsys):
    path = tmp_path / "answers_dpo.jsonl"
    path.write_text("".join(json.dumps({"key": k, "response": a}) + "\n" for k, a in enumerate([REFUSE, COMPLY, COMPLY, COMPLY])))
    assert refusal_counts(read_jsonl(str(path))) == {"response": {"harmful": (0, 0), "harmless": (1, 4)}}
    main([str(path)])
    assert capsys.readouterr().out.strip() == f"{path} [response]: harmless prompts refused 1/4 (25.0%)"


def test_bad_input_names_file_and_line(tmp_path):
    bad = tmp_path / "a.jsonl"
    bad.write_text('{"axis": "refusal", "sft": "x", "dpo": "y"}\n{not json\n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: malformed JSON"):
        read_jsonl(str(bad))
    with pytest.raises(DataError, match=r"answers:1: field 'dpo' missing or not text"):
        refusal_counts([{"axis": "refusal", "sft": "x"}])
    with pytest.raises(DataError, match="cannot read it"):
        read_jsonl(str(tmp_path / "missing.jsonl"))
