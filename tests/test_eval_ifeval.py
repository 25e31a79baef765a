"""`python -m minidpo.eval --benchmark ifeval` on the tiny model: both models answer greedily, the four figures
and the per-kind table are written, and the answers files score the same through `python -m minidpo.verify`."""

from __future__ import annotations

import json

import pytest

from minidpo.eval import main
from minidpo.verify import aggregate, read_ifeval, score_prompt
from minidpo.verify.cli import run as verify_run

RECORDS = [  # prompts of our own in IFEval's format (IFEval's own stay out of the repository)
    {"key": 1, "prompt": "Describe a river in all lowercase letters.", "instruction_id_list":
        ["change_case:english_lowercase"], "kwargs": [{}]},
    {"key": 2, "prompt": "Name three fruits without any commas.", "instruction_id_list": ["punctuation:no_comma"],
     "kwargs": [{}]},
    {"key": 3, "prompt": "Say hello in fewer than 40 words and end with 'Bye.'", "instruction_id_list":
        ["length_constraints:number_words", "startend:end_checker"],
     "kwargs": [{"relation": "less than", "num_words": 40}, {"end_phrase": "Bye."}]},
]


@pytest.fixture
def ifeval_file(tmp_path):
    path = tmp_path / "input_data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    return path


def test_ifeval_benchmark_end_to_end(tiny_model_dir, ifeval_file, tmp_path, capsys):
    from conftest import build_tiny_model_dir

    other = build_tiny_model_dir(tmp_path / "other", seed=1)
    out = tmp_path / "ifeval"
    res = main(["--benchmark", "ifeval", "--sft", tiny_model_dir, "--dpo", str(other), "--data", str(ifeval_file),
                "--output_dir", str(out), "--max_new_tokens", "12", "--n_kl", "2", "--batch_size", "2"])
    assert res["settings"]["prompts"] == 3 and res["settings"]["max_new_tokens"] == 12
    for name in ("sft", "dpo"):
        assert res[name]["prompts"] == 3 and res[name]["instructions"] == 4
        assert set(res[name]["per_kind"]) == {"change_case:english_lowercase", "punctuation:no_comma",
                                             "length_constraints:number_words", "startend:end_checker"}
        answers = [json.loads(line) for line in (out / f"answers_{name}.jsonl").read_text().splitlines()]
        assert [a["key"] for a in answers] == [1, 2, 3]
        # the same figures from the written answers, scored again independently of the run
        again = aggregate(score_prompt(r, a["response"]) for r, a in zip(read_ifeval(ifeval_file), answers))
        assert {k: again[k] for k in ("prompt_strict", "instruction_loose")} == \
            {k: res[name][k] for k in ("prompt_strict", "instruction_loose")}
        capsys.readouterr()
        summary = verify_run([str(ifeval_file), str(out / f"answers_{name}.jsonl")])
        assert summary["instruction_strict"] == res[name]["instruction_strict"]
    assert res["kl"]["n_samples"] == 2 and res["kl"]["kl_sequence"] != 0.0
    md = (out / "eval.md").read_text()
    assert "prompt-level strict" in md and "startend:end_checker" in md
    assert json.loads((out / "eval.json").read_text())["benchmark"] == "ifeval"

    # the SFT answers of that run reused: the same SFT figures and answers, the DPO model answers again
    again_out = tmp_path / "again"
    common = ["--benchmark", "ifeval", "--sft", tiny_model_dir, "--dpo", str(other), "--data", str(ifeval_file),
              "--n_kl", "0", "--batch_size", "2", "--sft_answers", str(out / "answers_sft.jsonl")]
    again = main(common + ["--output_dir", str(again_out), "--max_new_tokens", "12"])
    assert again["sft"] == res["sft"] and again["dpo"] == res["dpo"]
    assert (again_out / "answers_sft.jsonl").read_text() == (out / "answers_sft.jsonl").read_text()
    assert again["settings"]["sft_answers"] == str(out / "answers_sft.jsonl")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # answers made with another max_new_tokens are refused
        main(common + ["--output_dir", str(tmp_path / "o2"), "--max_new_tokens", "20"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert e.value.code == 2 and len(err) == 1 and "max_new_tokens 12, this one 20" in err[0]
    partial = tmp_path / "partial" / "answers_sft.jsonl"
    partial.parent.mkdir()
    partial.write_text((out / "answers_sft.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(SystemExit) as e:  # a prompt without an answer is named
        main(common[:-1] + [str(partial), "--output_dir", str(tmp_path / "o3"), "--max_new_tokens", "12"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert e.value.code == 2 and len(err) == 1 and "no answer for 2 of the 3 prompts (first: key 2)" in err[0]


def test_ifeval_bad_file_is_one_line(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": 1, "prompt": "x", "instruction_id_list": ["punctuation:no_comma"]}\n')
    with pytest.raises(SystemExit) as e:
        main(["--benchmark", "ifeval", "--sft", tiny_model_dir, "--dpo", tiny_model_dir, "--data", str(bad),
              "--output_dir", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bad.jsonl:1" in err[0] and "kwargs" in err[0]
