"""minidpo.verify: loose variants, the four aggregate figures, IFEval-format files and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from minidpo.errors import DataError
from minidpo.verify import (IFEvalRecord, aggregate, loose_variants, match_answers, read_answers, read_ifeval,
                            score_prompt)
from minidpo.verify.cli import main

RECORDS = [
    {"key": 1, "prompt": "p1", "instruction_id_list": ["punctuation:no_comma", "startend:quotation"],
     "kwargs": [{}, {}]},
    {"key": 2, "prompt": "p2", "instruction_id_list": ["detectable_format:json_format", "punctuation:no_comma"],
     "kwargs": [{}, {}]},
    {"key": 3, "prompt": "p3", "instruction_id_list": ["detectable_format:title"], "kwargs": [{}]},
    {"key": 4, "prompt": "p4", "instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": "Bye."}]},
    {"key": 5, "prompt": "p5", "instruction_id_list": ["made:up"], "kwargs": [{"x": 1}]},
]
ANSWERS = {1: '"no commas here"', 2: 'Here you go:\n{"a": 1}', 3: "<<T>> body", 5: "anything"}  # 4: no answer
# strict: [T, T], [F, T], [T], [F] (unanswered), [F] (unknown id); loose: [T, T], [T, T], [T], [F], [F]


def _records():
    return [IFEvalRecord(**row) for row in RECORDS]


def test_loose_variants_in_ifevals_order():
    assert loose_variants("*a*\nb\n*c*") == ["*a*\nb\n*c*", "a\nb\nc", "b\n*c*", "*a*\nb", "b", "b\nc", "a\nb", "b"]


def test_four_figures_on_a_hand_computed_set():
    results = [score_prompt(r, ANSWERS.get(r.key)) for r in _records()]
    assert [r.strict for r in results] == [[True, True], [False, True], [True], [False], [False]]
    assert [r.loose for r in results] == [[True, True], [True, True], [True], [False], [False]]
    assert [r.answered for r in results] == [True, True, True, False, True]
    summary = aggregate(results)
    assert summary["prompts"] == 5 and summary["instructions"] == 7 and summary["unanswered"] == 1
    assert summary["prompt_strict"] == pytest.approx(2 / 5)
    assert summary["prompt_loose"] == pytest.approx(3 / 5)
    assert summary["instruction_strict"] == pytest.approx(4 / 7)
    assert summary["instruction_loose"] == pytest.approx(5 / 7)
    assert summary["per_kind"]["punctuation:no_comma"] == {"n": 2, "strict": 1.0, "loose": 1.0}
    assert summary["per_kind"]["detectable_format:json_format"] == {"n": 1, "strict": 0.0, "loose": 1.0}
    assert summary["per_kind"]["startend:end_checker"] == {"n": 1, "strict": 0.0, "loose": 0.0}
    assert summary["unknown_ids"] == {"made:up": 1}
    assert aggregate([])["prompt_strict"] == 0.0


def _write(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.fixture
def files(tmp_path):
    inp = _write(tmp_path / "input.jsonl", RECORDS)
    ans = _write(tmp_path / "answers.jsonl", [{"key": k, "response": v} for k, v in ANSWERS.items()])
    return tmp_path, inp, ans


def test_cli_prints_the_four_figures_per_kind_and_notes(files, capsys):
    tmp, inp, ans = files
    summary = main([str(inp), str(ans), "--details", str(tmp / "details.jsonl")])
    out = capsys.readouterr().out
    assert summary["prompt_loose"] == pytest.approx(0.6)
    assert "prompt-level           40.0%   60.0%" in out
    assert "instruction-level      57.1%   71.4%" in out
    assert "detectable_format:json_format                       1    0.0%  100.0%" in out
    assert "1 of 5 prompts have no answer (counted as failed)" in out
    assert "1 instructions have an unknown id (counted as not followed): made:up x1" in out
    details = [json.loads(line) for line in (tmp / "details.jsonl").read_text().splitlines()]
    assert [d["key"] for d in details] == [1, 2, 3, 4, 5]
    assert details[1]["strict"] == [False, True] and details[1]["loose"] == [True, True]
    assert details[3]["answered"] is False and details[3]["response"] is None
    assert details[0]["follow_all_strict"] is True and details[0]["prompt"] == "p1"


def test_answers_keyed_by_prompt_text_and_unmatched_answers(tmp_path, capsys):
    inp = _write(tmp_path / "in.jsonl", RECORDS[:3])
    ans = _write(tmp_path / "ans.jsonl", [{"prompt": "p1", "response": ANSWERS[1]},
                                          {"key": "2", "response": ANSWERS[2]},
                                          {"prompt": "p3", "response": ANSWERS[3]}, {"key": 99, "response": "?"}])
    summary = main([str(inp), str(ans)])
    assert summary["unanswered"] == 0 and summary["prompt_strict"] == pytest.approx(2 / 3)
    assert "1 answers name no prompt of" in capsys.readouterr().out


@pytest.mark.parametrize("rows, where, message", [
    ([RECORDS[0], "{not json"], "input.jsonl:2", "malformed JSON"),
    ([{k: v for k, v in RECORDS[0].items() if k != "prompt"}], "input.jsonl:1:prompt", "missing field"),
    ([{**RECORDS[0], "kwargs": [{}]}], "input.jsonl:1:kwargs", "1 argument objects for 2 instructions"),
    ([{**RECORDS[3], "kwargs": [{"end_phrase": 3}]}], "input.jsonl:1:kwargs[0].end_phrase",
     "expected a non-empty string"),
    ([{**RECORDS[3], "kwargs": [{}]}], "input.jsonl:1:kwargs[0].end_phrase", "missing"),
    ([RECORDS[0], RECORDS[0]], "input.jsonl:2:key", "duplicate key 1"),
    (["[1, 2]"], "input.jsonl:1", "expected a JSON object"),
    ([{**RECORDS[0], "key": True}], "input.jsonl:1:key", "expected an integer or string"),
])
def test_cli_malformed_input_is_one_error_line(tmp_path, capsys, rows, where, message):
    inp = _write(tmp_path / "input.jsonl", rows)
    ans = _write(tmp_path / "answers.jsonl", [{"key": 1, "response": "x"}])
    with pytest.raises(SystemExit) as exit_info:
        main([str(inp), str(ans)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / where}:") and message in err and "\n" not in err


@pytest.mark.parametrize("rows, where, message", [
    ([{"key": 1}], "answers.jsonl:1:response", "missing field"),
    ([{"response": "x"}], "answers.jsonl:1:key", "an answer needs \"key\" or \"prompt\""),
    ([{"key": 1, "response": None}], "answers.jsonl:1:response", "expected a string"),
    ([{"key": 1, "response": "a"}, {"key": "1", "response": "b"}], "answers.jsonl:2:key", "second answer"),
    (["", "oops"], "answers.jsonl:2", "malformed JSON"),
])
def test_cli_malformed_answers_is_one_error_line(files, capsys, rows, where, message):
    tmp, inp, _ = files
    ans = _write(tmp / "answers.jsonl", rows)
    with pytest.raises(SystemExit):
        main([str(inp), str(ans)])
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp / where}:") and message in err


def test_readers_directly(files):
    _, inp, ans = files
    records = read_ifeval(inp)
    assert [r.key for r in records] == [1, 2, 3, 4, 5] and records[4].instruction_id_list == ["made:up"]
    responses, unmatched = match_answers(records, read_answers(ans))
    assert responses[3] is None and responses[0] == ANSWERS[1] and unmatched == []


def test_empty_input_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no records"):
        read_ifeval(_write(tmp_path / "empty.jsonl", [""]))


def test_ifeval_style_rows_with_every_argument_null(tmp_path):
    nulls = {"num_highlights": None, "relation": None, "num_words": None, "keywords": None, "language": None}
    row = {"key": 7, "prompt": "Describe a lighthouse.", "instruction_id_list": ["length_constraints:number_words"],
           "kwargs": [{**nulls, "relation": "less than", "num_words": 5}]}
    (record,) = read_ifeval(_write(tmp_path / "in.jsonl", [row]))
    assert score_prompt(record, "A tall white tower.").strict == [True]


def test_python_dash_m_entry_point(files):
    _, inp, ans = files
    done = subprocess.run([sys.executable, "-m", "minidpo.verify", str(inp), str(ans)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "prompt-level" in done.stdout
