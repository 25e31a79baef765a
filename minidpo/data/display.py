"""An answer as people read it: its thinking folded away, its tool calls as JSON (pure strings, for eval's
report and the app).

    answer_markdown('<think>\\nCall the tool.\\n</think>\\n\\n<tool_call>\\n{"name": "f", "arguments": {}}\\n</tool_call>')
    -> '<details><summary>Thinking</summary>\\n\\nCall the tool.\\n\\n</details>\\n\\n**Tool call** `f`\\n```json\\n...'

Thinking is a "<think>...</think>" block (an unclosed one, in an answer cut by max_new_tokens, runs to the
end); a tool call is a "<tool_call>...</tool_call>" block holding JSON, as Qwen3 / MiniMind-3 write them.
"""

from __future__ import annotations

import html
import json
import re

_BLOCK = re.compile(r"<think>(?P<think>.*?)(?:</think>|$)|<tool_call>(?P<call>.*?)(?:</tool_call>|$)", re.DOTALL)


def answer_parts(text: str) -> list[tuple[str, str]]:
    """The answer as ("text" | "thinking" | "tool_call", string) parts, in order, blank text left out."""
    parts, at = [], 0
    for m in _BLOCK.finditer(text):
        parts.append(("text", text[at:m.start()]))
        parts.append(("thinking", m.group("think")) if m.group("think") is not None else ("tool_call", m.group("call")))
        at = m.end()
    parts.append(("text", text[at:]))
    return [(kind, s.strip("\n")) for kind, s in parts if kind != "text" or s.strip()]


def _call_json(raw: str, indent: int | None) -> tuple[str, str | None]:
    """(the call as JSON, its name) or (the raw text, None) when it is not JSON."""
    try:
        call = json.loads(raw)
    except json.JSONDecodeError:
        return raw.strip(), None
    name = call.get("name") if isinstance(call, dict) else None
    return json.dumps(call, ensure_ascii=False, indent=indent), name if isinstance(name, str) else None


def _cut(s: str, limit: int | None) -> str:
    return s if limit is None or len(s) <= limit else s[:limit] + " …"


def answer_markdown(text: str, *, table_cell: bool = False, limit: int | None = None) -> str:
    """Markdown of an answer: thinking in a folded <details> block, each tool call as a JSON block.

    table_cell: one line for a Markdown table cell (newlines as <br>, "|" escaped, the call as inline
    code). limit: the most characters of each text or thinking part shown (None: all)."""
    out = []
    for kind, s in answer_parts(text):
        if kind == "thinking":
            body = _cut(s.strip(), limit) or "(empty)"
            if table_cell:
                out.append(f"<details><summary>Thinking</summary>{html.escape(body)}</details>")
            else:
                out.append(f"<details><summary>Thinking</summary>\n\n{body}\n\n</details>")
        elif kind == "tool_call":
            call, name = _call_json(s, None if table_cell else 2)
            label = f"**Tool call** `{name}`" if name else "**Tool call** (not JSON)"
            out.append(f"{label} <code>{html.escape(call)}</code>" if table_cell else f"{label}\n```json\n{call}\n```")
        else:
            out.append(_cut(s.strip(), limit))
    if table_cell:
        return "<br>".join(out).replace("|", "\\|").replace("\n", "<br>") or "(empty)"
    return "\n\n".join(out) or "(empty)"
