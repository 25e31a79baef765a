"""Preference files -> `PreferencePair`s.

Turns each record that minidpo.data.files reads (JSON, JSONL, Parquet, Arrow) into a `PreferencePair`:
the prompt as chat messages plus the chosen and rejected answers as assistant messages (their text,
tool calls and reasoning; minidpo.data.messages), and the record's tool schemas ("tools"). Every record keeps a `source` ("file.jsonl:17") so
that any error can name the file, the line and the field.

Formats (`data_format=`; "auto" detects it from the first record of each file):

- "prompt"   (MiniMind's DPO tutorial format, also TRL's standard form) {"prompt": str, "chosen": str,
             "rejected": str, optional "system": str}
- "messages" (MiniMind, and TRL's implicit-prompt form) {"chosen": [messages], "rejected": [messages]}:
             the leading messages the two conversations share are the prompt; what follows is one
             assistant message on each side.
- "sharegpt" (LLaMA-Factory) {"conversations": [{"from", "value"}...], "chosen": {"from", "value"},
             "rejected": {...}, optional "system", optional "tools" (a JSON string)}, roles system / human /
             gpt / function_call (the value: the call as JSON) / observation (a tool result).
- "openai"   (OpenAI's preference fine-tuning) {"input": {"messages": [...], "tools": [...]},
             "preferred_output": [message], "non_preferred_output": [message]}
- "alpaca"   {"instruction", optional "input", "chosen", "rejected", optional "system",
             optional "history": [[user, assistant], ...]}
- "trl"      (TRL's conversational form) {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
- "hh"       (Anthropic HH-RLHF, the DPO paper's data) {"chosen": "\n\nHuman: ...\n\nAssistant: ...", "rejected": ...}:
             transcripts as strings; the prompt is the shared transcript up to and including its last
             "\n\nAssistant:" (not their longest common prefix, which can eat the start of two answers that
             begin alike), parsed into user / assistant turns.
- "unpaired" (TRL's unpaired preference form, for loss_type kto) {"prompt": str | [messages], "completion": str |
             [one assistant message], "label": true | false, optional "system": str}: one answer, desirable (true)
             or not. Its PreferencePair has the completion as chosen and as rejected, and `label` set. A file
             may mix pairs and unpaired records (each keeps its kind; the loss decides what it trains on).
- "listwise" {"prompt", "responses": [K answers], "scores": [K numbers] or "ranking": [indices, best first]}
             (minidpo.data.listwise): K >= 2 ranked answers, ties allowed. Its PreferencePair has the best
             answer as chosen, the worst as rejected, and all K in `responses` / `scores`.
- "ultrafeedback" (UltraFeedback-binarized) {"prompt": str, "chosen": [messages], "rejected": [messages]}: the
             message lists repeat the user turn (which must be `prompt`); extra columns are ignored.
- "ultrafeedback_ratings" (UltraFeedback's raw form, openbmb/UltraFeedback) {"instruction": str, "completions":
             [{"response": str, "annotations": {aspect: {"Rating": "1".."5" or "N/A"}}, "overall_score", ...}]}:
             a listwise record, each completion scored by the mean of its aspect ratings ("N/A" left out);
             "ultrafeedback_overall" (only as data_format=) scores them by overall_score instead. Completions
             without a usable rating are left out (minidpo.data.listwise.parse_ultrafeedback).

Parquet (.parquet) and Arrow (.arrow: what `datasets.save_to_disk` writes) files and folders of such
shards are read with pyarrow; their records are named "file.parquet:record 17".

Keys other than these are ignored (ids, scores, ...).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from minidpo.errors import DataError

from .files import RawRecord, data_files, read_records, type_name
from .listwise import is_listwise, is_ultrafeedback, parse_listwise, parse_ultrafeedback
from .messages import Record, answer_key

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "function_call": "assistant", "observation": "tool", "tool": "tool"}
FORMATS = ("prompt", "messages", "sharegpt", "alpaca", "trl", "hh", "ultrafeedback", "openai", "unpaired",
           "listwise", "ultrafeedback_ratings", "ultrafeedback_overall")
FORMAT_ALIASES = {"seed": "prompt", "minimind": "messages", "trl_implicit": "messages", "implicit": "messages",
                  "llama_factory": "sharegpt", "trl_conversational": "trl", "hh_rlhf": "hh", "anthropic_hh": "hh",
                  "ultrafeedback_binarized": "ultrafeedback", "kto": "unpaired"}
HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


@dataclass(frozen=True)
class PreferencePair:
    """One preference: a prompt (chat messages, ending with a user turn or a tool result) and two answers.

    chosen / rejected: the answers' text (their content); chosen_message / rejected_message: the answers
    as assistant messages, with their tool calls and reasoning (minidpo.data.messages), which is what is
    rendered. tools: the tool schemas the template gets (the record's, else the file's), or None.
    label: None for a pair; for an unpaired example (chosen == rejected == its completion), True when
    the completion is desirable.
    raw: for string data (the prompt format without a system turn, HH transcripts), the (prompt, chosen,
    rejected) strings exactly as the record gives them: what chat_template="none" trains on."""

    prompt_messages: list[dict]
    chosen: str
    rejected: str
    source: str = ""
    raw: tuple[str, str, str] | None = None
    tools: list[dict] | None = None
    chosen_message: dict | None = None
    rejected_message: dict | None = None
    label: bool | None = None
    responses: tuple[dict, ...] | None = None  # a listwise record's K answers (messages) and their scores
    scores: tuple[float, ...] | None = None

    def answers(self) -> tuple[dict, dict]:
        """(chosen, rejected) as assistant messages."""
        return tuple(m if m is not None else {"role": "assistant", "content": text}
                     for m, text in ((self.chosen_message, self.chosen), (self.rejected_message, self.rejected)))


# ----------------------------------------------------------------------------------------------------
# Format detection


def canonical_format(data_format: str) -> str:
    f = FORMAT_ALIASES.get(data_format, data_format)
    if f != "auto" and f not in FORMATS:
        names = ", ".join(("auto",) + FORMATS + tuple(FORMAT_ALIASES))
        raise ValueError(f"unknown data_format {data_format!r}: choose one of {names}")
    return f


def detect_format(record: object, source: str = "") -> str:
    """Which of FORMATS a record looks like, from its keys."""
    where = f"{source}: " if source else ""
    if not isinstance(record, dict):
        raise DataError(f"{where}expected a JSON object per record, got {type_name(record)}", "wrong type")
    if is_unpaired(record):
        return "unpaired"
    if is_listwise(record):
        return "listwise"
    if is_ultrafeedback(record):  # before alpaca: it has an "instruction" too
        return "ultrafeedback_ratings"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record:
        return "alpaca"
    if "prompt" in record:
        if isinstance(record["prompt"], list):
            return "trl"
        return "ultrafeedback" if isinstance(record.get("chosen"), list) else "prompt"
    if "preferred_output" in record and "input" in record:
        return "openai"
    if isinstance(record.get("chosen"), list) and isinstance(record.get("rejected"), list):
        return "messages"
    if isinstance(record.get("chosen"), str) and HH_ASSISTANT in record["chosen"]:
        return "hh"
    raise DataError(
        f"{where}cannot tell the data format from the keys {sorted(record)}: expected "
        '"prompt"+"chosen"+"rejected", "chosen"/"rejected" message lists or HH-RLHF transcripts, '
        '"conversations" (ShareGPT), "instruction" (Alpaca), "completion"+"label" (unpaired), '
        '"responses"+"scores" (listwise) or "instruction"+"completions" (UltraFeedback with ratings); or pass '
        'data_format=', "unknown format")


def is_unpaired(record: object) -> bool:
    """An unpaired example (one completion with a label), not a pair."""
    return isinstance(record, dict) and "completion" in record and "label" in record


# ----------------------------------------------------------------------------------------------------
# Record -> PreferencePair


def _pair(r: Record, prompt: list[dict], chosen: dict | str, rejected: dict | str, prompt_field: str,
          raw: tuple[str, str, str] | None = None) -> PreferencePair:
    """The pair of a record, once its prompt is checked and its two answers differ."""
    r.check_prompt(prompt, prompt_field)
    c, j = (m if isinstance(m, dict) else {"role": "assistant", "content": m} for m in (chosen, rejected))
    if answer_key(c) == answer_key(j):
        r.fail("rejected", "identical to chosen (a pair must prefer one answer over a different one)",
               "chosen identical to rejected")
    return PreferencePair(prompt, c["content"], j["content"], r.source, raw, r.tools, c, j)


def _system(r: Record) -> list[dict]:
    s = r.get("system", str, required=False, allow_empty=True)
    return [{"role": "system", "content": s}] if s and s.strip() else []


def _parse_prompt(r: Record) -> PreferencePair:
    if isinstance(r.d.get("prompt"), list):  # TRL's two forms share the keys and may share a file
        return _parse_trl(r)
    system = _system(r)
    prompt = system + [{"role": "user", "content": r.get("prompt", str)}]
    chosen, rejected = r.get("chosen", str), r.get("rejected", str)
    raw = None if system else (prompt[-1]["content"], chosen, rejected)
    return _pair(r, prompt, chosen, rejected, "prompt", raw)


def _one_assistant(r: Record, msgs: list[dict], field: str, offset: int = 0) -> dict:
    if len(msgs) != 1:
        r.fail(field, f"expected exactly one assistant message after the prompt, got {len(msgs)}", "bad structure")
    if msgs[0]["role"] != "assistant":
        r.fail(f"{field}[{offset}].role", f"expected 'assistant', got {msgs[0]['role']!r}", "bad structure")
    return msgs[0]


def _parse_messages(r: Record) -> PreferencePair:
    chosen, rejected = r.messages("chosen"), r.messages("rejected")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == len(chosen) == len(rejected):
        r.fail("rejected", "identical to chosen (a pair must prefer one answer over a different one)",
               "chosen identical to rejected")
    if n == 0:
        r.fail("chosen", "chosen and rejected share no leading prompt turns", "bad structure")
    c = _one_assistant(r, chosen[n:], "chosen", n)
    j = _one_assistant(r, rejected[n:], "rejected", n)
    return _pair(r, chosen[:n], c, j, "chosen")


def _parse_trl(r: Record) -> PreferencePair:
    if isinstance(r.d.get("prompt"), str):  # a plain-string record among conversational ones
        return _parse_prompt(r)
    prompt = r.messages("prompt")
    c = _one_assistant(r, r.messages("chosen"), "chosen")
    j = _one_assistant(r, r.messages("rejected"), "rejected")
    return _pair(r, prompt, c, j, "prompt")


def _parse_unpaired(r: Record) -> PreferencePair:
    label = r.d.get("label")
    if not isinstance(label, bool):
        r.fail("label", f"expected true (desirable) or false (undesirable), got {type_name(label)}", "wrong type")
    if isinstance(r.d.get("prompt"), list):
        prompt = r.messages("prompt")
    else:
        prompt = _system(r) + [{"role": "user", "content": r.get("prompt", str)}]
    if isinstance(r.d.get("completion"), list):
        answer = _one_assistant(r, r.messages("completion"), "completion")
    else:
        answer = {"role": "assistant", "content": r.get("completion", str)}
    r.check_prompt(prompt, "prompt")
    raw = None
    if isinstance(r.d["prompt"], str) and len(prompt) == 1 and isinstance(r.d["completion"], str):
        raw = (prompt[0]["content"], answer["content"], answer["content"])
    return PreferencePair(prompt, answer["content"], answer["content"], r.source, raw, r.tools, answer, answer, label)


def _list_pair(r: Record, prompt: list[dict], answers: list[dict], scores: list[float]) -> PreferencePair:
    """The PreferencePair of K ranked answers: all of them with their scores, the best and worst as chosen/rejected."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # ties: the earlier answer ranks higher
    worst = min(range(len(scores)), key=lambda i: (scores[i], -i))
    c, j = answers[best], answers[worst]
    return PreferencePair(prompt, c["content"], j["content"], r.source, None, r.tools, c, j,
                          responses=tuple(answers), scores=tuple(scores))


def _parse_sharegpt(r: Record) -> PreferencePair:
    kw = dict(role_key="from", content_key="value", roles=SHAREGPT_ROLES)
    prompt = _system(r) + r.messages("conversations", **kw)
    c = r.message(r.get("chosen", dict), "chosen", **kw)
    j = r.message(r.get("rejected", dict), "rejected", **kw)
    for m, f in ((c, "chosen"), (j, "rejected")):
        if m["role"] != "assistant":
            r.fail(f"{f}.from", f"expected 'gpt' or 'function_call', got {r.d[f]['from']!r}", "bad structure")
    return _pair(r, prompt, c, j, "conversations")


def _parse_alpaca(r: Record) -> PreferencePair:
    instruction = r.get("instruction", str)
    inp = r.get("input", str, required=False, allow_empty=True)
    user = f"{instruction}\n{inp}" if inp and inp.strip() else instruction
    history = []
    for i, turn in enumerate(r.get("history", list, required=False, allow_empty=True) or []):
        if not isinstance(turn, list) or len(turn) != 2:
            r.fail(f"history[{i}]", f"expected a [user, assistant] pair, got {type_name(turn)}", "wrong type")
        history.append({"role": "user", "content": r.string(turn[0], f"history[{i}][0]")})
        history.append({"role": "assistant", "content": r.string(turn[1], f"history[{i}][1]")})
    prompt = _system(r) + history + [{"role": "user", "content": user}]
    return _pair(r, prompt, r.get("chosen", str), r.get("rejected", str), "instruction")


def _hh_turns(r: Record, transcript: str) -> list[dict]:
    """"\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:" -> user / assistant messages (the open
    last Assistant turn is where the answer goes, not a message)."""
    text = transcript if transcript.startswith("\n\n") else "\n\n" + transcript.lstrip("\n")
    parts = re.split(r"\n\n(Human|Assistant):", text)
    if parts[0].strip():
        r.fail("chosen", f"text before the first {HH_HUMAN!r} turn: {parts[0][:40]!r}", "bad structure")
    turns = [{"role": "user" if who == "Human" else "assistant", "content": said.strip()}
             for who, said in zip(parts[1::2], parts[2::2])]
    turns.pop()  # the open "Assistant:" the prompt ends with
    for i, t in enumerate(turns):
        if not t["content"]:
            r.fail("chosen", f"turn {i + 1} ({t['role']}) of the transcript is empty", "empty field")
        if i and t["role"] == turns[i - 1]["role"]:
            r.fail("chosen", f"turns {i} and {i + 1} are both {t['role']} turns", "bad structure")
    return turns


def _parse_hh(r: Record) -> PreferencePair:
    chosen, rejected = r.get("chosen", str), r.get("rejected", str)
    prompts = []
    for field, text in (("chosen", chosen), ("rejected", rejected)):
        end = text.rfind(HH_ASSISTANT)
        if end < 0:
            r.fail(field, f"no {HH_ASSISTANT!r} turn: not an HH-RLHF transcript", "bad structure")
        prompts.append(text[:end + len(HH_ASSISTANT)])
    if prompts[0] != prompts[1]:
        r.fail("rejected", f"does not share chosen's transcript up to its last {HH_ASSISTANT!r}", "bad structure")
    prompt = prompts[0]
    answers = (chosen[len(prompt):], rejected[len(prompt):])
    for field, a in zip(("chosen", "rejected"), answers):
        if not a.strip():
            r.fail(field, f"the answer after the last {HH_ASSISTANT!r} is empty", "empty field")
    return _pair(r, _hh_turns(r, prompt), answers[0].strip(), answers[1].strip(), "chosen", (prompt, *answers))


def _parse_ultrafeedback(r: Record) -> PreferencePair:
    prompt = r.get("prompt", str)
    pair = _parse_messages(r)
    if pair.prompt_messages[-1]["content"].strip() != prompt.strip():
        r.fail("prompt", "differs from the last user turn of chosen/rejected (UltraFeedback's message lists repeat "
               "the prompt)", "bad structure")
    return pair


def _parse_openai(r: Record) -> PreferencePair:
    """OpenAI's preference fine-tuning records: {"input": {"messages": [...], "tools": [...]},
    "preferred_output": [message], "non_preferred_output": [message]}."""
    inp = r.get("input", dict)
    r = Record({**r.d, "tools": inp.get("tools"), "input.messages": inp.get("messages")}, r.source, r.default_tools)
    c = _one_assistant(r, r.messages("preferred_output"), "preferred_output")
    j = _one_assistant(r, r.messages("non_preferred_output"), "non_preferred_output")
    return _pair(r, r.messages("input.messages"), c, j, "input.messages")


PARSERS = {"prompt": _parse_prompt, "messages": _parse_messages, "sharegpt": _parse_sharegpt,
           "alpaca": _parse_alpaca, "trl": _parse_trl, "hh": _parse_hh, "ultrafeedback": _parse_ultrafeedback, "openai": _parse_openai,
           "unpaired": _parse_unpaired, "listwise": lambda r: _list_pair(r, *parse_listwise(r)),
           "ultrafeedback_ratings": lambda r: _list_pair(r, *parse_ultrafeedback(r, "mean")),
           "ultrafeedback_overall": lambda r: _list_pair(r, *parse_ultrafeedback(r, "overall"))}


def parse_record(record: RawRecord, data_format: str, tools: list | None = None) -> PreferencePair:
    """One raw record -> PreferencePair, or a DataError naming source and field. tools: the file's tool
    schemas, for records without their own "tools"."""
    if isinstance(record.value, DataError):
        raise record.value
    return PARSERS[data_format](Record(record.value, record.source, tools))


def iter_pairs(path: str | os.PathLike, data_format: str = "auto",
               tools: list | None = None) -> Iterator[tuple[RawRecord, str, PreferencePair | DataError]]:
    """Yield (raw record, format, pair or DataError) for every record under `path`; `tools`: tool schemas
    for the records that declare none (see `minidpo.data.files.read_tools`).

    Per-record problems are yielded as DataErrors (so the caller can skip or raise); problems with a
    whole file (missing, empty, invalid JSON array) are raised.
    """
    fmt = canonical_format(data_format)
    for file in data_files(path):
        file_fmt = None if fmt == "auto" else fmt
        n = 0
        for rec in read_records(file):
            n += 1
            try:
                if isinstance(rec.value, DataError):
                    raise rec.value
                if fmt == "auto" and is_unpaired(rec.value):
                    # a file may mix pairs and unpaired examples (app votes: pairs, thumbs, "both bad");
                    # the trainer decides whether its loss takes both (loss_type sigmoid,kto)
                    yield rec, "unpaired", parse_record(rec, "unpaired", tools)
                    continue
                if file_fmt is None:
                    file_fmt = detect_format(rec.value, rec.source)
                yield rec, file_fmt, parse_record(rec, file_fmt, tools)
            except DataError as e:
                yield rec, file_fmt or "unknown", e
        if n == 0:
            raise DataError(f"{os.path.basename(file)}: no records (an empty JSON array)", "empty file")
