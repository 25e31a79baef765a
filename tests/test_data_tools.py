"""Tool calls in preference data: the TRL / OpenAI / LLaMA-Factory shapes, one-line errors, and the exact
prompt/answer boundary under Qwen3-family and MiniMind-3-style chat templates (tests/chat_templates.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from chat_templates import EOM, MINIMIND3, QWEN3, R1
from transformers import AutoTokenizer

from minidpo.data import ChatEncoder, iter_pairs, load_preference_data
from minidpo.data.boundary import BOUNDARY, JOINED, NOT_PREFIX, REASONING_DROPPED
from minidpo.data.messages import without_reasoning
from minidpo.errors import DataError
from minidpo.models import stop_ids

DATA = Path(__file__).parent / "data"
TOOLS = DATA / "tools_thinking.jsonl"
END = "<|im_end|>"
PARIS = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def tokenizer(model_dir, template=None, added=()):
    tok = AutoTokenizer.from_pretrained(model_dir)
    if template is not None:
        tok.chat_template = template
    if added:
        tok.add_tokens(list(added))
    return tok


def load(path, tok, **kw):
    kw.setdefault("max_length", 2048)
    kw.setdefault("cache_dir", None)
    kw.setdefault("log", None)
    return load_preference_data(path, tok, **kw)


def records(path=TOOLS):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def template_split(tok, pair, answer, enable_thinking=None):
    """(prompt text, answer text up to and including the end of turn), from the template's own rendering."""
    kw = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    prompt = tok.apply_chat_template(pair.prompt_messages, tools=pair.tools, add_generation_prompt=True,
                                     tokenize=False, **kw)
    full = tok.apply_chat_template(pair.prompt_messages + [answer], tools=pair.tools, tokenize=False, **kw)
    assert full.startswith(prompt), (prompt, full)
    return prompt, full[len(prompt):full.index(END, len(prompt)) + len(END)]


# ------------------------------------------------------------------------------------------ shapes
def test_trl_records_keep_tools_tool_calls_results_and_reasoning():
    pairs = [p for _, fmt, p in iter_pairs(TOOLS) if fmt == "trl"]
    assert len(pairs) == 6 and not any(isinstance(p, DataError) for p in pairs)
    first = pairs[0]
    assert [t["function"]["name"] for t in first.tools] == ["get_weather", "search"]
    assert first.chosen == "" and first.chosen_message == {
        "role": "assistant", "content": "", "reasoning_content": "The user wants live weather: call the tool.",
        "tool_calls": [PARIS]}
    assert first.rejected_message == {"role": "assistant", "content": "<think>I will guess.</think>It is sunny in Paris."}
    multi = pairs[1].prompt_messages  # arguments given as a JSON string come out as an object; null content as ""
    assert multi[1] == {"role": "assistant", "content": "", "reasoning_content": "Call the weather tool.",
                        "tool_calls": [{"type": "function", "id": "call_1",
                                        "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}
    assert multi[2] == {"role": "tool", "content": '{"temp_c": 4}', "tool_call_id": "call_1"}
    assert pairs[2].chosen_message["tool_calls"][0]["function"]["arguments"] == {"query": "1998 World Cup winner"}
    assert pairs[3].tools is None


def test_llama_factory_function_call_and_observation_are_the_same_messages():
    sg = [p for _, fmt, p in iter_pairs(DATA / "sharegpt_tools.json") if fmt == "sharegpt"]
    assert len(sg) == 2
    assert sg[0].tools == [{"name": "get_weather", "description": "Current weather of a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    assert sg[0].chosen_message == {"role": "assistant", "content": "", "tool_calls": [PARIS]}
    assert sg[0].prompt_messages[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert [m["role"] for m in sg[1].prompt_messages] == ["user", "assistant", "tool"]
    assert sg[1].prompt_messages[2] == {"role": "tool", "content": '{"temp_c": 4}'}


def test_openai_preference_records(tmp_path):
    rec = records()[0]
    f = tmp_path / "openai.jsonl"
    f.write_text(json.dumps({"input": {"messages": rec["prompt"], "tools": rec["tools"]},
                             "preferred_output": rec["chosen"], "non_preferred_output": rec["rejected"]}) + "\n")
    (_, fmt, got), = iter_pairs(f)
    (_, _, want), = list(iter_pairs(TOOLS))[:1]
    assert fmt == "openai"
    assert (got.prompt_messages, got.answers(), got.tools) == (want.prompt_messages, want.answers(), want.tools)


def test_tools_for_the_whole_file(tmp_path, tiny_model_dir):
    rec = records()[0]
    f, tools = tmp_path / "no_tools.jsonl", tmp_path / "tools.json"
    f.write_text(json.dumps({k: v for k, v in rec.items() if k != "tools"}) + "\n")
    tools.write_text(json.dumps({"tools": rec["tools"]}))
    ds = load(f, tokenizer(tiny_model_dir, QWEN3), tools=tools)
    assert len(ds) == 1 and '"name": "search"' in tokenizer(tiny_model_dir).decode(ds[0].prompt_ids)


@pytest.mark.parametrize("change, message", [
    (lambda r: r["chosen"][0]["tool_calls"][0]["function"].update(arguments="{city: Paris"),
     r'^bad\.jsonl:1: field "chosen\[0\]\.tool_calls\[0\]\.function\.arguments": not JSON \(Expecting property '
     r"name enclosed in double quotes at column 2\): '\{city: Paris'$"),
    (lambda r: r["chosen"][0]["tool_calls"][0]["function"].update(name="lookup"),
     r'^bad\.jsonl:1: field "chosen\[0\]\.tool_calls\[0\]\.function\.name": calls \'lookup\', which the record\'s '
     r"tools do not declare \(declared: get_weather, search\)$"),
    (lambda r: r["prompt"].append({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "x"}}]}),
     r'^bad\.jsonl:1: field "prompt\[2\]\.tool_calls\[0\]\.function\.name": calls \'x\''),
    (lambda r: r["chosen"][0]["tool_calls"][0]["function"].update(arguments="[1, 2]"),
     r'field "chosen\[0\]\.tool_calls\[0\]\.function\.arguments": expected a JSON object of arguments, got list$'),
    (lambda r: r.update(tools="[{\"name\": "),
     r'^bad\.jsonl:1: field "tools": not JSON'),
    (lambda r: r["chosen"][0].pop("tool_calls"),
     r'^bad\.jsonl:1: field "chosen\[0\]\.content": expected a non-empty string, got an empty one$'),
])
def test_a_malformed_tool_call_is_one_line(tmp_path, change, message):
    rec = records()[0]
    change(rec)
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(rec) + "\n")
    (_, _, err), = iter_pairs(f)
    assert isinstance(err, DataError) and "\n" not in str(err)
    assert err.reason in ("malformed tool call", "undeclared tool", "empty field")
    assert re.search(message, str(err)), str(err)


def test_llama_factory_function_call_that_is_not_json(tmp_path):
    rec = json.loads((DATA / "sharegpt_tools.json").read_text())[0]
    rec["chosen"]["value"] = "get_weather(city='Paris')"
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([rec]))
    (_, _, err), = iter_pairs(f)
    assert str(err).startswith('bad.json:1: field "chosen.value": not JSON (Expecting value at column 1)')


# ------------------------------------------------------------------------------------ the boundary
@pytest.mark.parametrize("thinking", [None, True])
@pytest.mark.parametrize("template", [QWEN3, MINIMIND3], ids=["qwen3", "minimind3"])
def test_every_pair_is_the_templates_own_split_at_the_generation_prompt(tiny_model_dir, template, thinking):
    tok = tokenizer(tiny_model_dir, template)
    ds = load(TOOLS, tok, enable_thinking=thinking)
    pairs = [p for _, _, p in iter_pairs(TOOLS)]
    assert len(ds) == 6 and ds.stats.boundary == {}
    for pair, ids in zip(pairs, ds):
        for answer, answer_ids in zip(pair.answers(), (ids.chosen_ids, ids.rejected_ids)):
            prompt, text = template_split(tok, pair, answer, thinking)
            assert ids.prompt_ids == tok(prompt, add_special_tokens=False)["input_ids"]
            assert tok.decode(answer_ids) == text and answer_ids[-1] == tok.convert_tokens_to_ids(END)


def test_thinking_off_with_reasoning_stripped_is_the_templates_own_split(tiny_model_dir):
    tok = tokenizer(tiny_model_dir, QWEN3)
    ds = load(TOOLS, tok, enable_thinking=False, answer_reasoning="strip")
    assert len(ds) == 6 and ds.stats.boundary == {}
    for pair, ids in zip([p for _, _, p in iter_pairs(TOOLS)], ds):
        for answer, answer_ids in zip(map(without_reasoning, pair.answers()), (ids.chosen_ids, ids.rejected_ids)):
            prompt, text = template_split(tok, pair, answer, False)
            assert ids.prompt_ids == tok(prompt, add_special_tokens=False)["input_ids"]
            assert prompt.endswith("<think>\n\n</think>\n\n") and tok.decode(answer_ids) == text


def test_qwen3_renders_tools_calls_results_and_only_the_current_reasoning(tiny_model_dir):
    tok = tokenizer(tiny_model_dir, QWEN3)
    ds = load(TOOLS, tok)
    first = tok.decode(ds[0].prompt_ids)
    assert first.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n")
    assert '\n{"type": "function", "function": {"name": "get_weather", "description": "Current weather' in first
    assert first.endswith("<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(ds[0].chosen_ids) == ('<think>\nThe user wants live weather: call the tool.\n</think>\n\n'
                                           '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                                           '</tool_call><|im_end|>')
    assert tok.decode(ds[0].rejected_ids) == "<think>\nI will guess.\n</think>\n\nIt is sunny in Paris.<|im_end|>"
    after_tool = tok.decode(ds[1].prompt_ids)  # the call is after the last user query: its reasoning stays
    assert after_tool.endswith('<|im_start|>assistant\n<think>\nCall the weather tool.\n</think>\n\n<tool_call>\n'
                               '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
                               '<|im_start|>user\n<tool_response>\n{"temp_c": 4}\n</tool_response><|im_end|>\n'
                               '<|im_start|>assistant\n')
    earlier = tok.decode(ds[4].prompt_ids)  # an answer before the last user turn: its reasoning is dropped
    assert "<|im_start|>assistant\n2 is prime.<|im_end|>" in earlier and "Small ones" not in earlier
    assert tok.decode(ds[5].chosen_ids).endswith('"Rome"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", '
                                                 '"arguments": {"city": "Madrid"}}\n</tool_call><|im_end|>')


def test_thinking_off_prompt_ends_with_the_empty_think_block(tiny_model_dir):
    """Qwen3 with enable_thinking false: the prompt is the generation-time one, empty think block included;
    answers with reasoning lose it (a think block after a closed one is never generated), said once."""
    tok = tokenizer(tiny_model_dir, QWEN3)
    ds = load(TOOLS, tok, enable_thinking=False)
    assert len(ds) == 6
    for p in ds:
        assert tok.decode(p.prompt_ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tok.decode(ds[0].chosen_ids) == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                                           '</tool_call><|im_end|>')
    assert tok.decode(ds[3].chosen_ids) == "12 + 7 = 19.<|im_end|>"
    assert ds.stats.boundary == {f"tools_thinking.jsonl: {REASONING_DROPPED}": 5}  # all but the last pair
    assert ds.stats.summary().count("tools_thinking.jsonl:") == 1


def test_minimind3_thinking_off_puts_the_answer_after_the_empty_think_block(tiny_model_dir):
    tok = tokenizer(tiny_model_dir, MINIMIND3)
    ds = load(TOOLS, tok, enable_thinking=False)
    assert len(ds) == 6
    last = ds[5]
    prompt = tok.decode(last.prompt_ids)
    assert prompt == ('<|im_start|>system\n# Tools\n<tools>\n' + json.dumps(records()[5]["tools"][0], ensure_ascii=False)
                      + '\n</tools>\nCall a tool with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.'
                      '<|im_end|>\n<|im_start|>user\nWeather in Rome and Madrid?<|im_end|>\n'
                      '<|im_start|>assistant\n<think>\n\n</think>\n\n')
    assert tok.decode(last.chosen_ids) == ('<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>\n'
                                          '<tool_call>{"name": "get_weather", "arguments": {"city": "Madrid"}}'
                                          '</tool_call><|im_end|>')
    assert tok.decode(ds[3].chosen_ids) == "12 + 7 = 19.<|im_end|>"
    # pairs with an answer that had reasoning / an answer put after the empty block (pair 6: both answers)
    assert ds.stats.boundary == {f"tools_thinking.jsonl: {REASONING_DROPPED}": 5, f"tools_thinking.jsonl: {JOINED}": 4}


def test_a_template_without_an_exact_split_is_reported_once_per_file(tiny_model_dir):
    tok = tokenizer(tiny_model_dir, R1)
    lines = []
    ds = load(DATA / "trl.jsonl", tok, max_bad_fraction=None, log=lines.append)
    assert len(ds) == 0 and ds.stats.dropped == {BOUNDARY: 3}
    assert ds.stats.boundary == {f"trl.jsonl: {NOT_PREFIX}": 3}
    assert len(lines) == 1 and lines[0].count(NOT_PREFIX) == 1 and "[3 pairs]" in lines[0]
    with pytest.raises(DataError, match="no usable preference pairs"):
        load(DATA / "trl.jsonl", tok)


def test_a_template_without_tool_support_is_one_line(tiny_model_dir):
    tok = tokenizer(tiny_model_dir)  # plain ChatML: no tools, no tool calls
    with pytest.raises(DataError, match=r"^tools_thinking\.jsonl:1: field \"prompt\": the chat template leaves out "
                                        r"the tool 'get_weather' \(it renders no tools or tool calls\)"):
        load(TOOLS, tok)


def test_qwen_added_tokens_are_not_taken_for_the_end_of_turn(tiny_model_dir):
    """Qwen's <think> / <tool_call> are added tokens (not special): the answer still ends at <|im_end|>."""
    tok = tokenizer(tiny_model_dir, QWEN3, added=("<think>", "</think>", "<tool_call>", "</tool_call>"))
    enc = ChatEncoder(tok)
    assert enc.end_id == tok.convert_tokens_to_ids(END) and enc.tool_end_id is None
    ds = load(TOOLS, tok)
    assert tok.convert_tokens_to_ids("<tool_call>") in ds[0].chosen_ids
    assert ds[0].chosen_ids[-1] == tok.convert_tokens_to_ids(END) and ds[0].chosen_ids.count(enc.end_id) == 1


def test_a_tool_call_turn_ends_at_its_own_end_token_and_the_sampler_stops_there(tiny_model_dir):
    """A template that ends tool-call turns with another special token (Llama 3.1's <|eom_id|>)."""
    tok = tokenizer(tiny_model_dir, EOM)
    enc = ChatEncoder(tok)
    eom = tok.convert_tokens_to_ids("<|endoftext|>")
    assert enc.end_id == tok.convert_tokens_to_ids(END) and enc.tool_end_id == eom
    assert enc.end_ids == {enc.end_id, eom} and stop_ids(tok) == {tok.eos_token_id, eom}  # what eval and the app sample with
    ds = load(TOOLS, tok, max_bad_fraction=None, on_bad_record="skip")
    call = [p for p in ds if tok.decode(p.chosen_ids).startswith("<tool_call>")][0]
    assert call.chosen_ids[-1] == eom and tok.decode(call.chosen_ids).endswith("</tool_call><|endoftext|>")
