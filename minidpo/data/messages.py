"""A record's chat messages -> the message dicts a chat template takes, each problem one DataError naming
file:line and field.

A message is {"role", "content"} plus, where the record gives them:
- assistant: "reasoning_content" (a string) and "tool_calls": [{"type": "function", "function": {"name",
  "arguments": {...}}}] (arguments given as an object or as a JSON string; always passed on as an object,
  which every template renders); with tool calls, the content may be empty or null;
- tool: "content" (the result; may be empty), "name" and "tool_call_id" when given.
`tools` (JSON schemas, a list or a JSON string of one) are checked and passed to the template as given; a
call to a tool they do not declare is an error. Reasoning written inline as a leading "<think>...</think>"
in the content stays where it is (templates of the Qwen3 family read it there); see `split_reasoning`.
"""

from __future__ import annotations

import json
import re

from minidpo.errors import DataError

from .files import type_name

ROLES = ("system", "user", "assistant", "tool")
THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)


def tool_name(tool: dict) -> str | None:
    """The name a tool schema declares: {"type": "function", "function": {"name": ...}} or {"name": ...}."""
    inner = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    name = inner.get("name")
    return name if isinstance(name, str) else None


def split_reasoning(message: dict) -> tuple[str, str]:
    """(reasoning, content) of an assistant message: its reasoning_content, or a leading <think> block."""
    content = message.get("content") or ""
    if message.get("reasoning_content"):
        return message["reasoning_content"], content
    m = THINK.match(content)
    return (m.group(1).strip("\n"), content[m.end():]) if m else ("", content)


def without_reasoning(message: dict) -> dict:
    """The message with its reasoning (reasoning_content or a leading <think> block) removed."""
    _, content = split_reasoning(message)
    return {k: v for k, v in message.items() if k != "reasoning_content"} | {"content": content}


def inline_reasoning(message: dict) -> dict:
    """reasoning_content moved into the content as a leading <think> block (for templates that ignore it)."""
    if not message.get("reasoning_content"):
        return message
    out = {k: v for k, v in message.items() if k != "reasoning_content"}
    out["content"] = f"<think>\n{message['reasoning_content'].strip(chr(10))}\n</think>\n\n{message['content']}"
    return out


def answer_key(message: dict) -> tuple:
    """What makes two answers the same answer: reasoning, text and tool calls, spaces around them aside."""
    reasoning, content = split_reasoning(message)
    calls = json.dumps(message.get("tool_calls") or [], sort_keys=True)
    return reasoning.strip(), content.strip(), calls


class Record:
    """Field access on one raw record that raises DataErrors naming source and field."""

    def __init__(self, value: object, source: str, default_tools: list | None = None):
        self.source = source
        if not isinstance(value, dict):
            self.fail("", f"expected a JSON object, got {type_name(value)}", "wrong type")
        self.d = value
        self.default_tools = default_tools
        self._tools: list | None = None

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

    # ---------------------------------------------------------------------------------------- tools
    @property
    def tools(self) -> list | None:
        """The record's "tools" (a list, or a JSON string of one), else the file's; None when neither."""
        if self._tools is None and self.d.get("tools") not in (None, "", []):
            value = self.d["tools"]
            if isinstance(value, str):
                value = self.json_value(value, "tools")
            if not isinstance(value, list):
                self.fail("tools", f"expected a list of tool schemas, got {type_name(value)}", "wrong type")
            for i, t in enumerate(value):
                if not isinstance(t, dict) or not tool_name(t):
                    self.fail(f"tools[{i}]", 'expected a tool schema with a name ({"type": "function", '
                              '"function": {"name": ..., "parameters": {...}}})', "bad tool")
            self._tools = value
        return self._tools if self._tools is not None else self.default_tools

    def json_value(self, text: str, field: str):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            self.fail(field, f"not JSON ({e.msg} at column {e.colno}): {text[:60]!r}", "malformed tool call")

    def tool_call(self, call: object, field: str) -> dict:
        """One tool call, OpenAI/TRL's {"type": "function", "function": {...}} or a bare {"name", "arguments"}."""
        if not isinstance(call, dict):
            self.fail(field, f"expected a tool call object, got {type_name(call)}", "malformed tool call")
        inner, where = (call["function"], f"{field}.function") if isinstance(call.get("function"), dict) \
            else (call, field)
        name = inner.get("name")
        if not isinstance(name, str) or not name.strip():
            self.fail(f"{where}.name", f"expected the called tool's name, got {type_name(name)}", "malformed tool call")
        args = inner.get("arguments", inner.get("parameters"))
        if isinstance(args, str):
            args = self.json_value(args, f"{where}.arguments") if args.strip() else {}
        if args is None:
            args = {}
        if not isinstance(args, dict):
            self.fail(f"{where}.arguments", f"expected a JSON object of arguments, got {type_name(args)}",
                      "malformed tool call")
        declared = [tool_name(t) for t in self.tools or []]
        if declared and name not in declared:
            self.fail(f"{where}.name", f"calls {name!r}, which the record's tools do not declare "
                      f"(declared: {', '.join(declared)})", "undeclared tool")
        out = {"type": "function", "function": {"name": name, "arguments": args}}
        if isinstance(call.get("id"), str):
            out["id"] = call["id"]
        return out

    def tool_calls(self, calls: object, field: str) -> list[dict]:
        if not isinstance(calls, list):
            self.fail(field, f"expected a list of tool calls, got {type_name(calls)}", "malformed tool call")
        return [self.tool_call(c, f"{field}[{i}]") for i, c in enumerate(calls)]

    # ------------------------------------------------------------------------------------- messages
    def content(self, value: object, field: str, role: str, *, optional: bool) -> str:
        """A message's text: a string, or OpenAI's list of {"type": "text", "text"} parts."""
        if isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in value):
            value = "".join(p["text"] for p in value)
        if value is None:
            if optional:
                return ""
            self.fail(field, "missing (expected a non-empty string)", "missing field")
        return self.string(value, field, allow_empty=optional or role == "system")

    def message(self, m: object, field: str, *, role_key="role", content_key="content",
                roles: dict | None = None) -> dict:
        if not isinstance(m, dict):
            self.fail(field, f"expected a message object, got {type_name(m)}", "wrong type")
        roles = roles or {r: r for r in ROLES}
        if role_key not in m:
            self.fail(f"{field}.{role_key}", f"missing (expected one of {', '.join(roles)})", "missing field")
        given = m[role_key]
        if not isinstance(given, str):
            self.fail(f"{field}.{role_key}", f"expected a role string, got {type_name(given)}", "wrong type")
        if given not in roles:
            self.fail(f"{field}.{role_key}", f"unknown role {given!r} (expected one of {', '.join(roles)})",
                      "unknown role")
        role = roles[given]
        if given == "function_call":  # LLaMA-Factory: the value is the call (or a list of calls) as JSON
            value = self.json_value(self.string(m.get(content_key), f"{field}.{content_key}"), f"{field}.{content_key}")
            return {"role": "assistant", "content": "",
                    "tool_calls": self.tool_calls(value if isinstance(value, list) else [value], f"{field}.{content_key}")}
        calls = m.get("tool_calls") if role == "assistant" else None
        out = {"role": role, "content": self.content(m.get(content_key), f"{field}.{content_key}", role,
                                                      optional=bool(calls) or role == "tool")}
        if role == "assistant":
            reasoning = m.get("reasoning_content")
            if reasoning is not None and self.string(reasoning, f"{field}.reasoning_content", allow_empty=True).strip():
                out["reasoning_content"] = reasoning
            if calls:
                out["tool_calls"] = self.tool_calls(calls, f"{field}.tool_calls")
        if role == "tool":
            out |= {k: m[k] for k in ("name", "tool_call_id") if isinstance(m.get(k), str)}
        return out

    def messages(self, key: str, **kw) -> list[dict]:
        """A list of messages; an empty system message is left out."""
        ms = [self.message(m, f"{key}[{i}]", **kw) for i, m in enumerate(self.get(key, list))]
        return [m for m in ms if m["role"] != "system" or m["content"].strip()]

    def check_prompt(self, prompt: list[dict], field: str) -> list[dict]:
        for i, m in enumerate(prompt):
            if m["role"] == "system" and i != 0:
                self.fail(field, f"a system message may only come first (found one at turn {i})", "bad structure")
            if m["role"] == "tool" and (i == 0 or prompt[i - 1]["role"] not in ("assistant", "tool")):
                self.fail(field, f"a tool result must follow an assistant tool call (turn {i})", "bad structure")
        if not prompt or prompt[-1]["role"] not in ("user", "tool"):
            self.fail(field, "the prompt must end with a user turn (or a tool result)", "bad structure")
        return prompt
