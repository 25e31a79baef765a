"""`minidpo data inspect` through main([...]) and through the console script's module."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from minidpo.cli import build_parser, main

DATA = Path(__file__).parent / "data"


def test_inspect_with_model_shows_format_counts_percentiles_and_masked_pair(tiny_model_dir, tmp_path, capsys):
    f = tmp_path / "pairs.jsonl"
    lines = (DATA / "trl.jsonl").read_text(encoding="utf-8").splitlines()
    lines.insert(1, '{"prompt": [{"role": "user", "content": "q"}], "chosen": 5}')  # a bad record on line 2
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rc = main(["data", "inspect", str(f), "--model", tiny_model_dir, "--max_length", "200",
               "--max_prompt_length", "40", "--index", "2", "--color", "never"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "format:   trl" in out
    assert "records:  4 read, 3 pairs kept" in out
    assert "skipped (bad records): 1" in out and "wrong type: 1" in out
    assert 'pairs.jsonl:2: field "chosen": expected a list, got int' in out
    assert "truncated: 2 pairs (2 prompts kept their end" in out
    header = next(line for line in out.splitlines() if line.strip().startswith("tokens"))
    assert header.split() == ["tokens", "p50", "p90", "p99", "max"]
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ") and len(line.split()) == 5}
    assert rows["prompt"][-1] == "40"  # max prompt length after truncation
    # pair 2 ("Compute:\n12 + 7") with the prompt marked and the response (with <|im_end|>) outside the marks
    assert "pair 2 (pairs.jsonl:4)" in out
    assert "[[<|im_start|>user\nCompute:\n12 + 7<|im_end|>\n<|im_start|>assistant\n]]12 + 7 = 19.<|im_end|>" in out
    assert "]]12 + 7 = 21.<|im_end|>" in out


def test_inspect_color_dims_prompt(tiny_model_dir, capsys):
    assert main(["data", "inspect", str(DATA / "prompt.jsonl"), "--model", tiny_model_dir, "--color", "always"]) == 0
    out = capsys.readouterr().out
    assert "\033[2m<|im_start|>system\nYou are a helpful assistant." in out
    assert "<|im_start|>assistant\n\033[0mPlants turn light into chemical energy.<|im_end|>" in out


def test_inspect_without_model_uses_characters_and_plain_template(capsys):
    assert main(["data", "inspect", str(DATA / "alpaca.jsonl"), "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "format:   alpaca" in out and "3 valid pairs" in out and "pass --model" in out
    assert "[[User: Compute:\n12 + 7\n\nAssistant: ]]12 + 7 = 19.<EOS>" not in out  # index 0 by default
    assert "[[System: You are a helpful assistant.\n\nUser: What is photosynthesis?\n\nAssistant: ]]" in out


def test_inspect_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "none.jsonl")]) == 2
    assert "minidpo: error:" in capsys.readouterr().err
    assert main(["data", "inspect", str(DATA / "trl.jsonl"), "--model", str(tmp_path / "nomodel")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    assert main(["data", "inspect", str(empty)]) == 2
    assert "e.jsonl: the file is empty" in capsys.readouterr().err


def test_parser_has_subcommands():
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
    args = build_parser().parse_args(["data", "inspect", "x.jsonl", "--data_format", "sharegpt"])
    assert (args.command, args.data_command, args.data_format) == ("data", "inspect", "sharegpt")


@pytest.mark.slow
def test_console_entry_point_subprocess():
    r = subprocess.run([sys.executable, "-m", "minidpo.cli", "data", "inspect", str(DATA / "sharegpt.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "format:   sharegpt" in r.stdout and json.loads((DATA / "expected_pairs.json").read_text())
