"""Preference files -> `PreferencePair`s.

Turns each record that minidpo.data.files reads (JSON, JSONL, Parquet, Arrow) into a `PreferencePair`:
the prompt as chat messages plus the chosen and rejected answers as plain strings. Every record keeps a `source` ("file.jsonl:17") so
that any error can name the file, the line and the field.

Formats (`data_format=`; "auto" detects it from the first record of each file):

- "prompt"   (MiniMind's DPO tutorial format, also TRL's standard form) {"prompt": str, "chosen": str,
             "rejected": str, optional "system": str}
- "messages" (MiniMind, and TRL's implicit-prompt form) {"chosen": [messages], "rejected": [messages]}:
             the leading messages the two conversations share are the prompt; what follows is one
             assistant message on each side.
- "sharegpt" (LLaMA-Factory) {"conversations": [{"from", "value"}...], "chosen": {"from", "value"},
             "rejected": {...}, optional "system"}, roles system / human / gpt.
- "alpaca"   {"instruction", optional "input", "chosen", "rejected", optional "system",
             optional "history": [[user, assistant], ...]}
- "trl"      (TRL's conversational form) {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
- "hh"       (Anthropic HH-RLHF, the DPO paper's data) {"chosen": "\n\nHuman: ...\n\nAssistant: ...", "rejected": ...}:
             transcripts as strings; the prompt is the shared transcript up to and including its last
             "\n\nAssistant:" (not their longest common prefix, which can eat the start of two answers that
             begin alike), parsed into user / assistant turns.
- "ultrafeedback" (UltraFeedback-binarized) {"prompt": str, "chosen": [messages], "rejected": [messages]}: the
             message lists repeat the user turn (which must be `prompt`); extra columns are ignored.

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

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
FORMATS = ("prompt", "messages", "sharegpt", "alpaca", "trl", "hh", "ultrafeedback")
FORMAT_ALIASES = {"seed": "prompt", "minimind": "messages", "trl_implicit": "messages", "implicit": "messages",
                  "llama_factory": "sharegpt", "trl_conversational": "trl", "hh_rlhf": "hh", "anthropic_hh": "hh",
                  "ultrafeedback_binarized": "ultrafeedback"}
HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


@dataclass(frozen=True)
class PreferencePair:
    """One preference: a prompt (chat messages, ending with a user turn) and two answers to it.

    raw: for string data (the prompt format without a system turn, HH transcripts), the (prompt, chosen,
    rejected) strings exactly as the record gives them: what chat_template="none" trains on."""

    prompt_messages: list[dict]
    chosen: str
    rejected: str
    source: str = ""
    raw: tuple[str, str, str] | None = None


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
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record:
        return "alpaca"
    if "prompt" in record:
        if isinstance(record["prompt"], list):
            return "trl"
        return "ultrafeedback" if isinstance(record.get("chosen"), list) else "prompt"
    if isinstance(record.get("chosen"), list) and isinstance(record.get("rejected"), list):
        return "messages"
    if isinstance(record.get("chosen"), str) and HH_ASSISTANT in record["chosen"]:
        return "hh"
    raise DataError(
        f"{where}cannot tell the data format from the keys {sorted(record)}: expected "
        '"prompt"+"chosen"+"rejected", "chosen"/"rejected" message lists or HH-RLHF transcripts, '
        '"conversations" (ShareGPT) or "instruction" (Alpaca); or pass data_format=', "unknown format")


# ----------------------------------------------------------------------------------------------------
# Record -> PreferencePair


class _Rec:
    """Field access that raises DataErrors naming source and field."""

    def __init__(self, value: object, source: str):
        self.source = source
        if not isinstance(value, dict):
            self.fail("", f"expected a JSON object, got {type_name(value)}", "wrong type")
        self.d = value

    def fail(self, field: str, msg: str, reason: str):
        f = f' field "{field}":' if field else ""
        raise DataError(f"{self.source}:{f} {msg}", reason)

    def string(self, value: object, field: str, *, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            self.fail(field, f"expected a non-empty string, got {type_name(value)}", "wrong type")
        if not allow_empty and not value.strip():
            self.fail(field, "expected a non-empty string, got an empty one", "empty field")
        return value

    def get(self, key: str, kind: type, *, required: bool = True, allow_empty: bool = False):
        if key not in self.d or self.d[key] is None:
            if required:
                what = "a non-empty string" if kind is str else f"a non-empty {type_name(kind())}"
                self.fail(key, f"missing (expected {what}; the record has {', '.join(map(repr, self.d)) or 'no keys'})",
                          "missing field")
            return None
        v = self.d[key]
        if kind is str:
            return self.string(v, key, allow_empty=allow_empty)
        if not isinstance(v, kind):
            self.fail(key, f"expected {'an object' if kind is dict else 'a list'}, got {type_name(v)}", "wrong type")
        if not allow_empty and len(v) == 0:
            self.fail(key, f"expected a non-empty {type_name(kind())}, got an empty one", "empty field")
        return v

    def message(self, m: object, field: str, *, role_key="role", content_key="content",
                roles: dict | None = None) -> dict:
        if not isinstance(m, dict):
            self.fail(field, f"expected a message object, got {type_name(m)}", "wrong type")
        roles = roles or {r: r for r in ROLES}
        if role_key not in m:
            self.fail(f"{field}.{role_key}", f"missing (expected one of {', '.join(roles)})", "missing field")
        role = m[role_key]
        if not isinstance(role, str):
            self.fail(f"{field}.{role_key}", f"expected a role string, got {type_name(role)}", "wrong type")
        if role not in roles:
            self.fail(f"{field}.{role_key}", f"unknown role {role!r} (expected one of {', '.join(roles)})",
                      "unknown role")
        if content_key not in m or m[content_key] is None:
            self.fail(f"{field}.{content_key}", "missing (expected a non-empty string)", "missing field")
        content = self.string(m[content_key], f"{field}.{content_key}", allow_empty=roles[role] == "system")
        return {"role": roles[role], "content": content}

    def messages(self, key: str, **kw) -> list[dict]:
        """A list of messages; an empty system message is left out."""
        ms = [self.message(m, f"{key}[{i}]", **kw) for i, m in enumerate(self.get(key, list))]
        return [m for m in ms if m["role"] != "system" or m["content"].strip()]

    def check_prompt(self, prompt: list[dict], field: str) -> list[dict]:
        for i, m in enumerate(prompt):
            if m["role"] == "system" and i != 0:
                self.fail(field, f"a system message may only come first (found one at turn {i})", "bad structure")
        if not prompt or prompt[-1]["role"] != "user":
            self.fail(field, "the prompt must end with a user turn", "bad structure")
        return prompt

    def pair(self, prompt: list[dict], chosen: str, rejected: str, prompt_field: str,
             raw: tuple[str, str, str] | None = None) -> PreferencePair:
        self.check_prompt(prompt, prompt_field)
        if chosen.strip() == rejected.strip():
            self.fail("rejected", "identical to chosen (a pair must prefer one answer over a different one)",
                      "chosen identical to rejected")
        return PreferencePair(prompt, chosen, rejected, self.source, raw)


def _system(r: _Rec) -> list[dict]:
    s = r.get("system", str, required=False, allow_empty=True)
    return [{"role": "system", "content": s}] if s and s.strip() else []


def _parse_prompt(r: _Rec) -> PreferencePair:
    system = _system(r)
    prompt = system + [{"role": "user", "content": r.get("prompt", str)}]
    chosen, rejected = r.get("chosen", str), r.get("rejected", str)
    raw = None if system else (prompt[-1]["content"], chosen, rejected)
    return r.pair(prompt, chosen, rejected, "prompt", raw)


def _one_assistant(r: _Rec, msgs: list[dict], field: str, offset: int = 0) -> str:
    if len(msgs) != 1:
        r.fail(field, f"expected exactly one assistant message after the prompt, got {len(msgs)}", "bad structure")
    if msgs[0]["role"] != "assistant":
        r.fail(f"{field}[{offset}].role", f"expected 'assistant', got {msgs[0]['role']!r}", "bad structure")
    return msgs[0]["content"]


def _parse_messages(r: _Rec) -> PreferencePair:
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
    return r.pair(chosen[:n], c, j, "chosen")


def _parse_trl(r: _Rec) -> PreferencePair:
    prompt = r.messages("prompt")
    c = _one_assistant(r, r.messages("chosen"), "chosen")
    j = _one_assistant(r, r.messages("rejected"), "rejected")
    return r.pair(prompt, c, j, "prompt")


def _parse_sharegpt(r: _Rec) -> PreferencePair:
    kw = dict(role_key="from", content_key="value", roles=SHAREGPT_ROLES)
    prompt = _system(r) + r.messages("conversations", **kw)
    c = r.message(r.get("chosen", dict), "chosen", **kw)
    j = r.message(r.get("rejected", dict), "rejected", **kw)
    for m, f in ((c, "chosen"), (j, "rejected")):
        if m["role"] != "assistant":
            r.fail(f"{f}.from", f"expected 'gpt', got {r.d[f]['from']!r}", "bad structure")
    return r.pair(prompt, c["content"], j["content"], "conversations")


def _parse_alpaca(r: _Rec) -> PreferencePair:
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
    return r.pair(prompt, r.get("chosen", str), r.get("rejected", str), "instruction")


def _hh_turns(r: _Rec, transcript: str) -> list[dict]:
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


def _parse_hh(r: _Rec) -> PreferencePair:
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
    return r.pair(_hh_turns(r, prompt), answers[0].strip(), answers[1].strip(), "chosen", (prompt, *answers))


def _parse_ultrafeedback(r: _Rec) -> PreferencePair:
    prompt = r.get("prompt", str)
    pair = _parse_messages(r)
    if pair.prompt_messages[-1]["content"].strip() != prompt.strip():
        r.fail("prompt", "differs from the last user turn of chosen/rejected (UltraFeedback's message lists repeat "
               "the prompt)", "bad structure")
    return pair


PARSERS = {"prompt": _parse_prompt, "messages": _parse_messages, "sharegpt": _parse_sharegpt,
           "alpaca": _parse_alpaca, "trl": _parse_trl, "hh": _parse_hh, "ultrafeedback": _parse_ultrafeedback}


def parse_record(record: RawRecord, data_format: str) -> PreferencePair:
    """One raw record -> PreferencePair, or a DataError naming source and field."""
    if isinstance(record.value, DataError):
        raise record.value
    return PARSERS[data_format](_Rec(record.value, record.source))


def iter_pairs(path: str | os.PathLike, data_format: str = "auto") -> Iterator[tuple[RawRecord, str, PreferencePair | DataError]]:
    """Yield (raw record, format, pair or DataError) for every record under `path`.

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
                if file_fmt is None:
                    if isinstance(rec.value, DataError):
                        raise rec.value
                    file_fmt = detect_format(rec.value, rec.source)
                yield rec, file_fmt, parse_record(rec, file_fmt)
            except DataError as e:
                yield rec, file_fmt or "unknown", e
        if n == 0:
            raise DataError(f"{os.path.basename(file)}: no records (an empty JSON array)", "empty file")
