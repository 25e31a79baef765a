"""Where the prompt ends and the answer starts: the prompt is what the chat template writes with
`add_generation_prompt=True` (what the model sees at generation time); the answer is what the template
writes after it for the whole conversation, up to its end-of-turn token.

When the template's conversation does not start with its own generation prompt, the split is not exact:
- the generation prompt closes the think block (Qwen3 / MiniMind-3 with enable_thinking off:
  "<think>\\n\\n</think>\\n\\n") but the answer brings reasoning: a think block after a closed one is never
  generated, so the answer's reasoning is dropped (REASONING_DROPPED);
- the generation prompt ends with an empty think block the template does not write in answers: the
  answer is put after it, as a model with thinking off writes it (JOINED);
- anything else: the pair is dropped (reason BOUNDARY), never trained on a guessed split.
Each is counted per file (`ChatEncoder.notes`) and reported once per file.
"""

from __future__ import annotations

import json
import re

from minidpo.errors import DataError

from .messages import split_reasoning, tool_name, without_reasoning

PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
EMPTY_THINK = re.compile(r"<think>\s*</think>\s*$")  # the end of a generation prompt, thinking off
BOUNDARY = "no exact prompt/answer split"  # the DataError reason of a pair dropped for it
REASONING_DROPPED = ("reasoning dropped from the answer: the generation prompt closes the think block "
                     "(enable_thinking off), so reasoning after it would never be generated")
JOINED = ("answer put after the generation prompt's empty think block (the template writes none in answers; "
          "a model with thinking off writes it this way)")
NOT_PREFIX = ("dropped: the template's generation prompt is not where its rendering of the answer starts, "
              "so there is no exact prompt/answer split")


def plain_content(m: dict) -> str:
    """A message's text for the plain fallback: reasoning as a <think> block, tool calls as <tool_call> JSON."""
    reasoning, content = split_reasoning(m) if m["role"] == "assistant" else ("", m["content"])
    parts = [f"<think>\n{reasoning}\n</think>\n\n{content}" if reasoning else content]
    parts += [f"<tool_call>\n{json.dumps(c['function'], ensure_ascii=False)}\n</tool_call>"
              for c in m.get("tool_calls") or []]
    return "\n".join(p for p in parts if p)


def plain_prompt(messages: list[dict], tools: list | None = None) -> str:
    """The plain fallback's prompt: "Role: text" turns, the tools first, ending with "Assistant: "."""
    head = f"Tools: {json.dumps(tools, ensure_ascii=False)}\n\n" if tools else ""
    return head + "".join(f"{PLAIN_ROLES[m['role']]}: {plain_content(m)}\n\n" for m in messages) + "Assistant: "


def first_special(tokenizer, ids: list[int]) -> int | None:
    """The first of `ids` that is a special token (not merely an added one, as Qwen's </tool_call> is)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= {i for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items() if getattr(t, "special", False)}
    return next((i for i in ids if i in special), None)


def check_tools_rendered(source: str, field: str, text: str, messages: list[dict], tools: list | None) -> None:
    """A DataError when the template left out a declared tool or a tool call (it has no tool support)."""
    names = [tool_name(t) for t in tools or []]
    names += [c["function"]["name"] for m in messages for c in m.get("tool_calls") or []]
    missing = next((n for n in names if n not in text), None)
    if missing is not None:
        raise DataError(f'{source}: field "{field}": the chat template leaves out the tool {missing!r} (it renders '
                        "no tools or tool calls); use the model's own template with tool support",
                        "template without tools")


class Renderer:
    """The tokenizer's chat template (or the plain fallback), with `enable_thinking` passed through."""

    def __init__(self, tokenizer, enable_thinking: bool | None = None):
        self.tok = tokenizer
        self.template = bool(getattr(tokenizer, "chat_template", None))
        self.enable_thinking = enable_thinking

    @property
    def name(self) -> str:
        """The tokenizer's folder (or hub name), for messages."""
        return getattr(self.tok, "name_or_path", "") or "the tokenizer"

    def render(self, messages: list[dict], tools: list | None, *, generation: bool) -> str:
        kw = {} if self.enable_thinking is None else {"enable_thinking": self.enable_thinking}
        return self.tok.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                            add_generation_prompt=generation, **kw)

    def prompt_text(self, messages: list[dict], tools: list | None = None) -> str:
        if self.template:
            return self.render(messages, tools, generation=True)
        return plain_prompt(messages, tools)

    def answer_text(self, messages: list[dict], prompt: str, answer: dict,
                    tools: list | None = None) -> tuple[str | None, str]:
        """(the text the template writes for `answer` after `prompt`, what was done: "" when the prompt is a
        prefix of the conversation, else REASONING_DROPPED / JOINED); (None, NOT_PREFIX) when no split is exact."""
        if not self.template:
            return plain_content(answer), ""
        full = self.render(messages + [answer], tools, generation=False)
        if full.startswith(prompt):
            return full[len(prompt):], ""
        base = self.render(messages, tools, generation=False)
        if not (prompt.startswith(base) and full.startswith(base)):
            return None, NOT_PREFIX
        opening, turn = prompt[len(base):], full[len(base):]
        if "</think>" in opening and split_reasoning(answer)[0]:
            text, how = self.answer_text(messages, prompt, without_reasoning(answer), tools)
            return text, (REASONING_DROPPED if text is not None else how)
        closed = EMPTY_THINK.search(opening)
        k = closed.start() if closed else -1
        if closed and turn.startswith(opening[:k]) and not turn[k:].lstrip().startswith("<think>"):
            return turn[k:], JOINED
        return None, NOT_PREFIX
