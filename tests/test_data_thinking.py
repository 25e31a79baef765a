"""Reasoning in answers (as given / stripped / kept where both have it), `data inspect` showing the rendered
pair and its boundary, answers displayed with thinking folded and tool calls as JSON, and a DPO run on
tool-call and thinking pairs under a Qwen3-style template."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

import pytest
from chat_templates import QWEN3
from transformers import AutoTokenizer

from minidpo.cli import main
from minidpo.config import RunConfig, validate
from minidpo.data import load_preference_data
from minidpo.data.boundary import REASONING_DROPPED
from minidpo.data.display import answer_markdown, answer_parts
from minidpo.data.inspect import inspect_report
from minidpo.errors import ConfigError, DataError
from minidpo.eval.report import render_markdown

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
TOOLS = DATA / "tools_thinking.jsonl"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def qwen_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a Qwen3-style chat template on its tokenizer."""
    path = tmp_path_factory.mktemp("qwen_style") / "model"
    shutil.copytree(tiny_model_dir, path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = QWEN3
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tok(qwen_dir):
    return AutoTokenizer.from_pretrained(qwen_dir)


def load(path, tok, **kw):
    kw.setdefault("max_length", 2048)
    kw.setdefault("cache_dir", None)
    kw.setdefault("log", None)
    return load_preference_data(path, tok, **kw)


def answers(tok, ds, i):
    return tok.decode(ds[i].chosen_ids), tok.decode(ds[i].rejected_ids)


# --------------------------------------------------------------------------------- answer_reasoning
def test_reasoning_as_given_strip_and_if_both(tok):
    given, strip, both = (load(TOOLS, tok, answer_reasoning=m) for m in ("as_given", "strip", "if_both"))
    one_sided, two_sided = 3, 4  # pair 4 has reasoning in chosen only; pair 5 in both answers
    assert answers(tok, given, one_sided) == ("<think>\n12 + 7: 12 + 8 = 20, minus 1.\n</think>\n\n12 + 7 = 19.<|im_end|>",
                                              "<think>\n\n</think>\n\n12 + 7 = 21.<|im_end|>")
    bare = ("<think>\n\n</think>\n\n12 + 7 = 19.<|im_end|>", "<think>\n\n</think>\n\n12 + 7 = 21.<|im_end|>")
    assert answers(tok, strip, one_sided) == answers(tok, both, one_sided) == bare
    assert answers(tok, both, two_sided) == answers(tok, given, two_sided) == (
        "<think>\nNext after 2.\n</think>\n\n3 is prime.<|im_end|>", "<think>\nEven numbers?\n</think>\n\n4 is prime.<|im_end|>")
    assert answers(tok, strip, two_sided) == ("<think>\n\n</think>\n\n3 is prime.<|im_end|>",
                                              "<think>\n\n</think>\n\n4 is prime.<|im_end|>")
    for ds in (given, strip, both):  # the prompt never changes
        assert [p.prompt_ids for p in ds] == [p.prompt_ids for p in given]
    call = tok.decode(strip[0].chosen_ids)  # a tool call with its reasoning stripped keeps the call
    assert '"city": "Paris"' in call and "live weather" not in call


def test_answers_that_differ_only_in_reasoning_cannot_be_stripped(tok, tmp_path):
    f = tmp_path / "same.jsonl"
    f.write_text(json.dumps({"prompt": [{"role": "user", "content": "Hi"}],
                             "chosen": [{"role": "assistant", "content": "<think>Be kind.</think>Hello!"}],
                             "rejected": [{"role": "assistant", "content": "<think>Be rude.</think>Hello!"}]}) + "\n")
    assert len(load(f, tok)) == 1
    with pytest.raises(DataError, match=r'^same\.jsonl:1: field "rejected": identical to chosen once their '
                                        r"reasoning is stripped \(answer_reasoning strip\)$"):
        load(f, tok, answer_reasoning="strip")


def test_a_template_that_ignores_reasoning_content_gets_it_inline(tiny_model_dir):
    chatml = AutoTokenizer.from_pretrained(tiny_model_dir)
    ds = load(DATA / "tools_thinking.jsonl", chatml, on_bad_record="skip", max_bad_fraction=None)
    assert ds.stats.skipped == {"template without tools": 4}  # ChatML renders no tools: said, not dropped silently
    assert answers(chatml, ds, 0)[0] == "<think>\n12 + 7: 12 + 8 = 20, minus 1.\n</think>\n\n12 + 7 = 19.<|im_end|>"


def test_settings_are_checked(tmp_path, qwen_dir):
    kw = dict(model=qwen_dir, data=str(TOOLS), output_dir=str(tmp_path / "o"), deepspeed=f"{ROOT}/ds_configs/zero2.json")
    with pytest.raises(ConfigError, match="^--answer_reasoning maybe: choose one of as_given, strip, if_both$"):
        validate(RunConfig(**kw, answer_reasoning="maybe"))
    with pytest.raises(ConfigError, match=r"^--tools .*nope\.json: no such file"):
        validate(RunConfig(**kw, tools=str(tmp_path / "nope.json")))
    validate(RunConfig(**kw, enable_thinking=False, answer_reasoning="if_both"))


# ---------------------------------------------------------------------------------------- inspect
def test_inspect_shows_the_rendered_pair_and_its_boundary(tok):
    report, n = inspect_report(TOOLS, tok, max_length=2048, enable_thinking=False, index=0)
    assert n == 6
    assert "thinking: enable_thinking=False, answer_reasoning=as_given" in report
    assert f"  tools_thinking.jsonl: {REASONING_DROPPED}: 5 pairs" in report
    prompt = tok.apply_chat_template(json.loads(TOOLS.read_text().splitlines()[0])["prompt"], tokenize=False,
                                     add_generation_prompt=True, enable_thinking=False,
                                     tools=json.loads(TOOLS.read_text().splitlines()[0])["tools"])
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert ("--- chosen (" in report and "trained tokens, the last '<|im_end|>') ---\n[[" + prompt + "]]<tool_call>\n"
            '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>') in report


def test_data_inspect_command_passes_the_settings(qwen_dir, capsys):
    assert main(["data", "inspect", str(TOOLS), "--model", qwen_dir, "--enable_thinking", "false",
                 "--answer_reasoning", "strip", "--index", "3", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "enable_thinking=False, answer_reasoning=strip" in out and REASONING_DROPPED not in out
    assert "<think>\n\n</think>\n\n]]12 + 7 = 19.<|im_end|>" in out
    assert main(["data", "inspect", str(TOOLS), "--color", "never"]) == 0  # no model: the plain fallback
    plain = capsys.readouterr().out
    assert 'Tools: [{"type": "function"' in plain and '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in plain


# ---------------------------------------------------------------------------------------- display
def test_answer_markdown_folds_thinking_and_shows_tool_calls_as_json():
    text = ('<think>\nThe user wants the weather.\n</think>\n\nLet me check.\n<tool_call>\n'
            '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    assert answer_parts(text) == [("thinking", "The user wants the weather."), ("text", "Let me check."),
                                  ("tool_call", '{"name": "get_weather", "arguments": {"city": "Paris"}}')]
    assert answer_markdown(text) == (
        "<details><summary>Thinking</summary>\n\nThe user wants the weather.\n\n</details>\n\nLet me check.\n\n"
        '**Tool call** `get_weather`\n```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n'
        "  }\n}\n```")
    cell = answer_markdown(text, table_cell=True)
    assert "\n" not in cell and cell.startswith("<details><summary>Thinking</summary>The user wants the weather.</details>")
    assert cell.endswith('**Tool call** `get_weather` <code>{&quot;name&quot;: &quot;get_weather&quot;, '
                         "&quot;arguments&quot;: {&quot;city&quot;: &quot;Paris&quot;}}</code>")
    assert answer_markdown("<think>cut off by max_new_tok") == \
        "<details><summary>Thinking</summary>\n\ncut off by max_new_tok\n\n</details>"
    assert answer_markdown("<tool_call>get_weather(Paris)</tool_call>") == \
        "**Tool call** (not JSON)\n```json\nget_weather(Paris)\n```"
    assert answer_markdown("plain | answer", table_cell=True) == "plain \\| answer"


def test_eval_report_folds_thinking_in_the_side_by_side_table():
    result = {"settings": {"sft_dir": "s", "dpo_dir": "d", "heldout_path": "h", "beta": 0.1, "temperature": 0,
                           "top_p": 1, "top_k": 0, "repetition_penalty": 1, "max_new_tokens": 8, "seed": 0},
              "preference": {"n_pairs": 1, "implicit_reward_accuracy": 1, "logp_accuracy": {"sft": 1, "dpo": 1},
                             "logp_accuracy_per_token": {"sft": 1, "dpo": 1}, "implicit_reward_margin": 0.1,
                             "rewards_chosen": 0.1, "rewards_rejected": 0.0},
              "preference_by_axis": {}, "seconds": 1,
              "examples": [{"axis": "tools", "lang": "en", "prompt": "Weather?", "sft_ok": None, "dpo_ok": True,
                            "sft": "It is sunny.", "dpo": '<think>Ask the tool.</think><tool_call>{"name": "w", '
                            '"arguments": {}}</tool_call>'}]}
    md = render_markdown(result)
    assert ("| tools | en | Weather? | It is sunny. | ✓ <details><summary>Thinking</summary>Ask the tool.</details><br>"
            "**Tool call** `w` <code>{&quot;name&quot;: &quot;w&quot;, &quot;arguments&quot;: {}}</code> |") in md


# ----------------------------------------------------------------------------------------- training
def _tool_pairs(path, n=24):
    rng = random.Random(0)
    cities = ["Paris", "Oslo", "Rome", "Madrid", "Lima", "Cairo"]
    with open(path, "w") as f:
        for i in range(n):
            city, temp = cities[i % len(cities)], rng.randint(-5, 30)
            call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}
            if i % 2:
                rec = {"prompt": [{"role": "user", "content": f"Weather in {city}?"}],
                       "chosen": [{"role": "assistant", "content": "", "reasoning_content": "Call the tool.",
                                   "tool_calls": [call]}],
                       "rejected": [{"role": "assistant", "content": f"<think>Guess.</think>It is {temp} C."}]}
            else:
                rec = {"prompt": [{"role": "user", "content": f"Weather in {city}?"},
                                  {"role": "assistant", "content": "", "tool_calls": [call]},
                                  {"role": "tool", "content": json.dumps({"temp": temp})}],
                       "chosen": [{"role": "assistant", "content": f"<think>The tool says {temp}.</think>It is {temp} C."}],
                       "rejected": [{"role": "assistant", "content": f"It is {temp + 20} C."}]}
            f.write(json.dumps({**rec, "tools": [WEATHER]} if i % 2 else rec) + "\n")  # (a short row: 512 positions)


@pytest.mark.slow
@pytest.mark.parametrize("thinking", [None, False])
def test_dpo_trains_on_tool_call_and_thinking_pairs(tmp_path, qwen_dir, thinking, capsys):
    from minidpo.train import train

    data = tmp_path / "tools.jsonl"
    _tool_pairs(data)
    out = tmp_path / "run"
    train(RunConfig(model=qwen_dir, data=str(data), output_dir=str(out), deepspeed=f"{ROOT}/ds_configs/zero2.json",
                    learning_rate=1e-3, batch_size=2, max_steps=6, log_interval=1, save_interval=0, max_length=500,
                    max_prompt_length=400, beta=0.5, dtype="fp32", enable_thinking=thinking,
                    group_by_length=False))  # mixed batches: every step sees both kinds of pair
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 0
    assert all(math.isfinite(r["loss"]) for r in rows) and rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["rewards/chosen"] > rows[-1]["rewards/rejected"]
    log = capsys.readouterr().out
    assert "24 pairs kept of 24 records read (format: trl)" in log
    assert "truncated" not in log and "dropped (" not in log  # whole pairs, every one
    assert log.count(REASONING_DROPPED) == (1 if thinking is False else 0)
