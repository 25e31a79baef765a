"""Held-out pairs whose answers are tool calls: eval scores the answer messages with the record's tools and
the data's enable_thinking (a tool call's text alone is empty), under a Qwen3-style template
(tests/chat_templates.py) on two tiny random models."""

from __future__ import annotations

import json
import math

import pytest
import torch
from chat_templates import QWEN3
from conftest import build_tiny_model_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

from minidpo.data import ChatEncoder
from minidpo.eval import evaluate, main
from minidpo.eval.heldout import read_heldout
from minidpo.generation import prompt_ids_for

CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": CITY}}]
RECORD = {"prompt": [{"role": "user", "content": "Weather in Paris?"}],
          "chosen": [{"role": "assistant", "content": "", "tool_calls": [
              {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}],
          "rejected": [{"role": "assistant", "content": "It is sunny."}], "tools": TOOLS}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(sft, dpo) folders: two tiny models with the same vocabulary and a Qwen3-style chat template."""
    out = []
    for seed in (0, 1):
        path = build_tiny_model_dir(tmp_path_factory.mktemp(f"qwen3_tiny_{seed}"), seed=seed)
        tok = AutoTokenizer.from_pretrained(path)
        tok.chat_template = QWEN3
        tok.save_pretrained(path)
        out.append(str(path))
    return out


def _logp(model, prompt: list[int], response: list[int]) -> float:
    """log pi(response | prompt), summed in plain float64 over the response tokens."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].double().log_softmax(-1)
    picked = logits.gather(-1, ids[0, 1:, None])[:, 0]
    return float(picked[len(prompt) - 1:].sum())


@pytest.mark.parametrize("thinking", [None, False])
def test_heldout_tool_call_pair_is_scored_as_the_answer_message(models, tmp_path, thinking):
    data = tmp_path / "heldout.jsonl"
    data.write_text(json.dumps(RECORD) + "\n", encoding="utf-8")
    (item,) = read_heldout(data)
    assert item.chosen == "" and item.answers()[0]["tool_calls"] and item.tools == TOOLS
    beta = 0.5
    res = evaluate(*models, data, tmp_path / "eval", beta=beta, n_generate=0, n_kl=0, tensorboard=False,
                   enable_thinking=thinking)
    p = res["preference"]
    assert res["settings"]["enable_thinking"] is thinking

    tok = AutoTokenizer.from_pretrained(models[0])
    enc = ChatEncoder(tok, enable_thinking=thinking)
    chosen = enc.encode_prompt_response(RECORD["prompt"], RECORD["chosen"][0], tools=TOOLS)
    rejected = enc.encode_prompt_response(RECORD["prompt"], RECORD["rejected"][0], tools=TOOLS)
    text = tok.decode(chosen[0] + chosen[1])
    assert '"name": "get_weather"' in tok.decode(chosen[0])  # the tools are in the prompt
    assert "<tool_call>" in tok.decode(chosen[1]) and '"Paris"' in text  # the call is what is scored
    assert ("<think>\n\n</think>" in tok.decode(chosen[0])) == (thinking is False)
    sft, dpo = (AutoModelForCausalLM.from_pretrained(m).eval() for m in models)
    hand = {k: (_logp(sft, *row), _logp(dpo, *row)) for k, row in (("chosen", chosen), ("rejected", rejected))}
    for k in ("chosen", "rejected"):
        assert math.isclose(p[f"logps_{k}"]["sft"], hand[k][0], rel_tol=1e-4, abs_tol=1e-3)
        assert math.isclose(p[f"logps_{k}"]["dpo"], hand[k][1], rel_tol=1e-4, abs_tol=1e-3)
        assert math.isclose(p[f"rewards_{k}"], beta * (hand[k][1] - hand[k][0]), rel_tol=1e-3, abs_tol=1e-3)

    empty = enc.encode_prompt_response(RECORD["prompt"], "", tools=TOOLS)  # what scoring the text alone gave
    assert not math.isclose(p["logps_chosen"]["sft"], _logp(sft, *empty), abs_tol=1e-2)


def test_the_cli_passes_enable_thinking_and_prompts_carry_the_tools(models, tmp_path):
    data = tmp_path / "heldout.jsonl"
    data.write_text(json.dumps(RECORD) + "\n", encoding="utf-8")
    kw = dict(beta=0.5, n_generate=0, n_kl=0, tensorboard=False)
    off = evaluate(*models, data, tmp_path / "off", enable_thinking=False, **kw)["preference"]
    default = evaluate(*models, data, tmp_path / "default", **kw)["preference"]
    res = main(["--sft", models[0], "--dpo", models[1], "--data", str(data), "--output_dir", str(tmp_path / "cli"),
                "--beta", "0.5", "--enable_thinking", "false", "--n_generate", "1", "--max_new_tokens", "2",
                "--n_kl", "1", "--judge", ""])
    assert res["settings"]["enable_thinking"] is False and res["preference"] == off != default

    tok = AutoTokenizer.from_pretrained(models[0])
    enc = ChatEncoder(tok, enable_thinking=False)
    ids = prompt_ids_for(tok, RECORD["prompt"], enc, TOOLS)  # what eval's sampled answers start from
    assert ids == enc.encode_prompt_response(RECORD["prompt"], RECORD["chosen"][0], tools=TOOLS)[0]
    assert '"name": "get_weather"' in tok.decode(ids) and tok.decode(ids).endswith("<think>\n\n</think>\n\n")
