"""Rendering and encoding: a pair's prompt and answers through the tokenizer's chat template (or the
plain fallback, or raw strings) into `TokenizedPair` ids with a response-only split. The rules are in
`minidpo.data.tokenize`'s docstring; where the prompt ends and the answer starts is
`minidpo.data.boundary`; truncation, the dataset and its cache live in `minidpo.data.tokenize`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from minidpo.config.sections import CHAT_TEMPLATES, REASONING_MODES
from minidpo.errors import DataError, ModelError, first_line

from .boundary import BOUNDARY, Renderer, check_tools_rendered, first_special, plain_content
from .formats import PreferencePair
from .messages import inline_reasoning, split_reasoning, without_reasoning

_PROBE = "\u2063minidpo-probe\u2063"
_TOOL_PROBE = "minidpo_probe_tool"


@dataclass
class TokenizedPair:
    """Token ids of one preference pair; chosen and rejected both follow `prompt_ids`."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    @property
    def max_length(self) -> int:
        """Length of the longer of the two sequences (prompt + answer)."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


class ChatEncoder(Renderer):
    """Renders prompts and responses with a tokenizer's chat template (or the plain fallback) and encodes them.

    chat_template: "auto" (the tokenizer's template, or the plain fallback; prompts already templated
    are used raw) or "none" (every pair raw: string data only). `raw_pairs` counts the pairs encoded raw.
    enable_thinking: passed to the template when not None. answer_reasoning: what to do with the answers'
    reasoning: "as_given", "strip" (from both), "if_both" (kept only where both answers have some).
    `notes`: "file: what was done at the prompt/answer boundary" -> pairs (minidpo.data.boundary)."""

    def __init__(self, tokenizer, chat_template: str = "auto", *, enable_thinking: bool | None = None,
                 answer_reasoning: str = "as_given"):
        if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
            raise ValueError(f"expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")
        if chat_template not in CHAT_TEMPLATES:
            raise ValueError(f"chat_template {chat_template!r}: choose one of {', '.join(CHAT_TEMPLATES)}")
        if answer_reasoning not in REASONING_MODES:
            raise ValueError(f"answer_reasoning {answer_reasoning!r}: choose one of {', '.join(REASONING_MODES)}")
        super().__init__(tokenizer, enable_thinking)
        self.mode = chat_template
        self.answer_reasoning = answer_reasoning
        self.raw_pairs = 0
        self.notes: dict[str, int] = {}
        self.eos_id = tokenizer.eos_token_id
        bos = tokenizer.bos_token_id
        self.bos_ids = [bos] if (not self.template and bos is not None and bos != self.eos_id) else []
        self.end_id = None  # the end-of-turn token the template writes after an answer
        self.marker = None  # the template's turn marker: a string prompt holding it is already templated
        self._tool_end: list[int | None] = []  # probed on first need: the end of a tool-call turn
        self._renders_reasoning: bool | None = None  # probed on first need
        if self.template and (chat_template == "auto" or self.eos_id is None):  # "none" needs them for no more
            self._probe_template()
        if self.end_id is None and self.eos_id is None:
            raise ModelError(f"{self.name}: the tokenizer has no EOS token and its chat template ends answers with "
                             "no special token: set tokenizer.eos_token (or a chat template) before preparing DPO data")

    def _probe_template(self) -> None:
        """Render a one-turn conversation to find `end_id` and `marker` (the first special token the
        template writes after an answer, and before a prompt)."""
        messages = [{"role": "user", "content": "hi"}]
        try:
            prompt = self.prompt_text(messages)
            text, _ = self.answer_text(messages, prompt, {"role": "assistant", "content": _PROBE})
        except Exception as e:  # jinja2's TemplateError and friends, raised from inside the template
            raise ModelError(f"{self.name}: its chat template fails on a one-turn conversation ({first_line(e)}): "
                             "fix the template in its tokenizer_config.json / chat_template.jinja, or use "
                             "chat_template none (string data only)") from e
        text = text or ""
        tail = text[text.find(_PROBE) + len(_PROBE):] if _PROBE in text else ""
        self.end_id = next(iter(self._special_ids(tail)), None)
        first = next(iter(self._special_ids(prompt)), None)
        self.marker = self.tok.convert_ids_to_tokens(first) if first is not None else None

    @property
    def tool_end_id(self) -> int | None:
        """The token the template ends a tool-call turn with (Llama 3.1: <|eom_id|>), when it is not end_id."""
        if not self._tool_end:
            end = None
            if self.template:
                call = {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": _TOOL_PROBE, "arguments": {}}}]}
                tools = [{"type": "function", "function": {"name": _TOOL_PROBE, "parameters": {}}}]
                try:
                    text = self.render([{"role": "user", "content": "hi"}, call], tools, generation=False)
                except Exception:  # noqa: BLE001 - a template without tool calls: nothing to stop at
                    text = ""
                if _TOOL_PROBE in text:
                    end = first_special(self.tok, self._special_ids(text[text.rfind(_TOOL_PROBE):]))
            self._tool_end.append(end if end != self.end_id else None)
        return self._tool_end[0]

    @property
    def end_ids(self) -> frozenset[int]:
        """Every token that ends an answer turn: end_id (or EOS) and tool_end_id."""
        ends = {self.end_id if self.end_id is not None else self.eos_id, self.tool_end_id}
        return frozenset(int(t) for t in ends if t is not None)

    def _special_ids(self, text: str) -> list[int]:
        """The special token ids in `text`, in order: from its encoding, or, when the tokenizer cannot encode
        the template's words (a WordLevel vocabulary without an unknown token), from where the special
        tokens' strings occur in it (the tokenizer splits them out before anything else)."""
        special = set(getattr(self.tok, "all_special_ids", []) or [])
        special.update(getattr(self.tok, "added_tokens_decoder", {}) or {})
        try:
            return [t for t in self.encode([text])[0] if t in special]
        except ModelError:
            ids = sorted(special)
            strings = {s: i for s, i in zip(self.tok.convert_ids_to_tokens(ids), ids) if s}
            if not strings:
                return []
            pattern = re.compile("|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True)))
            return [strings[m.group()] for m in pattern.finditer(text)]

    # ---------------------------------------------------------------------------------- reasoning
    @property
    def renders_reasoning(self) -> bool:
        """Whether the template writes an answer's reasoning_content (else it is moved inline, as <think>)."""
        if self._renders_reasoning is None:
            answer = {"role": "assistant", "content": "x", "reasoning_content": _PROBE}
            try:
                text = self.render([{"role": "user", "content": "hi"}, answer], None, generation=False)
            except Exception:  # noqa: BLE001 - a template that refuses the key does not render it
                text = ""
            self._renders_reasoning = _PROBE in text
        return self._renders_reasoning

    def answers(self, pair: PreferencePair) -> tuple[dict, dict]:
        """The pair's two answers as they are rendered: reasoning per `answer_reasoning`, and moved inline
        for a template that ignores reasoning_content. A DataError when that leaves nothing to prefer."""
        c, j = pair.answers()
        both = all(split_reasoning(m)[0].strip() for m in (c, j))
        if self.answer_reasoning == "strip" or (self.answer_reasoning == "if_both" and not both):
            c, j = without_reasoning(c), without_reasoning(j)
            for name, m in (("chosen", c), ("rejected", j)):
                if not m["content"].strip() and not m.get("tool_calls"):
                    raise DataError(f"{pair.source}: field \"{name}\": nothing left once its reasoning is stripped "
                                    f"(answer_reasoning {self.answer_reasoning})", "empty without reasoning")
            same = (c["content"].strip(), c.get("tool_calls")) == (j["content"].strip(), j.get("tool_calls"))
            if same and pair.label is None:  # an unpaired example's two answers are its one completion
                raise DataError(f"{pair.source}: field \"rejected\": identical to chosen once their reasoning is "
                                f"stripped (answer_reasoning {self.answer_reasoning})", "identical without reasoning")
        if self.template and any(m.get("reasoning_content") for m in (c, j)) and not self.renders_reasoning:
            c, j = inline_reasoning(c), inline_reasoning(j)
        return c, j

    def encode(self, texts: list[str], sources: Sequence[str] | None = None) -> list[list[int]]:
        """Token ids of each text, without added special tokens. sources: what names each text in an error."""
        if not texts:
            return []
        return self._tokenize(texts, False, sources)

    def _tokenize(self, texts: list[str], add_special_tokens: bool, sources: Sequence[str] | None = None):
        """The tokenizer's ids of `texts`; a tokenizer that cannot encode one is a ModelError naming it."""
        try:
            return self.tok(texts, add_special_tokens=add_special_tokens)["input_ids"]
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises a bare Exception
            error = e
        for k, text in enumerate(texts):  # which one: encode them one at a time
            try:
                self.tok(text, add_special_tokens=add_special_tokens)
            except Exception as e:  # noqa: BLE001 - as above
                what = f"the text of {sources[k]}" if sources else f"{text[:60]!r}"
                error = e
                break
        else:
            what = f"the text of {sources[0]}" if sources else "a batch of texts"
        raise ModelError(f"{self.name}: its tokenizer cannot encode {what} ({first_line(error)}); use the tokenizer "
                         "that belongs to the model, or one that encodes any text (byte-level BPE, or a "
                         "vocabulary with an unknown token)") from error

    def finish_response(self, ids: list[int], tool_call: bool = False) -> list[int]:
        """Cut after the end-of-turn token (keeping it once; after a tool call, any of `end_ids`), or append
        EOS when the text has none."""
        end = self.end_id if self.end_id is not None else self.eos_id
        ends = self.end_ids if tool_call else {end}
        last = max((k for k, t in enumerate(ids) if t in ends), default=None)
        return ids[: last + 1] if last is not None else ids + [end]

    def encode_prompt_response(self, prompt_messages: list[dict], response: str | dict,
                               tools: list | None = None) -> tuple[list[int], list[int]]:
        """(prompt_ids, response_ids) for one answer (its text, or an assistant message); see the module
        function of the same name. Without an exact split the answer is its own text, as the plain fallback's."""
        answer = response if isinstance(response, dict) else {"role": "assistant", "content": response}
        pt = self.prompt_text(prompt_messages, tools)
        rt = self.answer_text(prompt_messages, pt, answer, tools)[0]
        rt = plain_content(answer) if rt is None else rt
        p, full = self.encode([pt, pt + rt])
        return self._split(p, full, rt, bool(answer.get("tool_calls")))

    def _split(self, prompt_ids: list[int], full_ids: list[int], response_text: str,
               tool_call: bool = False) -> tuple[list[int], list[int]]:
        """Response ids = the tokens of the whole conversation after the prompt's tokens.

        If a token straddles the boundary (the prompt's tokens are not a prefix of the conversation's),
        the response text is encoded on its own instead, so the prompt ids stay those of the prompt.
        """
        n = len(prompt_ids)
        if full_ids[:n] == prompt_ids:
            response = full_ids[n:]
        else:
            response = self.encode([response_text])[0]
        return self.bos_ids + prompt_ids, self.finish_response(response, tool_call)

    def note(self, source: str, what: str) -> None:
        """Count one pair of `source`'s file under what was done at its boundary."""
        key = f"{source.rsplit(':', 1)[0]}: {what}"
        self.notes[key] = self.notes.get(key, 0) + 1

    def render_pair(self, p: PreferencePair) -> tuple[str, str, str]:
        """(prompt text, chosen's text, rejected's text) as the template writes them (minidpo.data.boundary).
        DataErrors: tools the template leaves out, no exact split (reason BOUNDARY), answers made identical."""
        c, j = self.answers(p)
        prompt = self.prompt_text(p.prompt_messages, p.tools)
        check_tools_rendered(p.source, "prompt", prompt, p.prompt_messages, p.tools)
        texts, done = [], set()
        for name, answer in (("chosen", c), ("rejected", j)):
            text, how = self.answer_text(p.prompt_messages, prompt, answer, p.tools)
            if text is None:
                self.note(p.source, how)
                raise DataError(f"{p.source}: {how}", BOUNDARY)
            check_tools_rendered(p.source, name, text, [answer], None)
            texts.append(text)
            done.add(how)
        if texts[0] == texts[1] and p.label is None:  # an unpaired example's are its one completion
            raise DataError(f'{p.source}: field "rejected": rendered identical to chosen (their difference is '
                            "what the template leaves out)", "identical once rendered")
        for how in done - {""}:
            self.note(p.source, how)
        return prompt, texts[0], texts[1]

    def describe(self) -> str:
        """What renders the prompts, in words (for `minidpo data inspect` and the load summary)."""
        if self.mode == "none":
            return "none (raw prompt + answer + EOS)"
        if not self.template:
            return "plain fallback (the tokenizer has no chat template)"
        return f"the tokenizer's chat template (string prompts holding {self.marker!r} are used as they are)" \
            if self.marker else "the tokenizer's chat template"

    def use_raw(self, pair: PreferencePair) -> bool:
        """Encode this pair raw: chat_template none, or a string prompt that is already templated."""
        if self.mode == "none":
            if pair.raw is None:
                raise DataError(f"{pair.source}: chat_template none needs string data (a prompt string without "
                                "a system turn, or an HH transcript); this record's prompt is chat messages",
                                "needs string data")
            return True
        return pair.raw is not None and self.marker is not None and self.marker in pair.raw[0]

    def encode_raw(self, pair: PreferencePair) -> TokenizedPair:
        """TRL's string data: ids of prompt and of prompt + answer as the tokenizer encodes text, EOS appended."""
        prompt, chosen, rejected = pair.raw
        p, fc, fr = self._tokenize([prompt, prompt + chosen, prompt + rejected], True, [pair.source] * 3)
        out = []
        for full, answer in ((fc, chosen), (fr, rejected)):
            ids = full[len(p):] if full[:len(p)] == p else self.encode([answer], [pair.source])[0]
            if ids and ids[-1] == self.eos_id:  # the tokenizer's post-processor added it already
                ids = ids[:-1]
            out.append(list(ids) + [self.eos_id if self.eos_id is not None else self.end_id])
        self.raw_pairs += 1
        return TokenizedPair(list(p), out[0], out[1])

    def encode_pairs(self, pairs: Sequence[PreferencePair]) -> list[TokenizedPair | DataError]:
        """Batch-encode pairs (fast tokenizers encode a batch in parallel).

        A pair the chat template refuses (e.g. a template that raises on a system message), or one without
        an exact prompt/answer split, comes back as a DataError naming its source, so that
        on_bad_record="skip" can skip it (the loader counts BOUNDARY ones as dropped).
        """
        texts, sources, responses, failed, raw = [], [], [], {}, {}
        for k, p in enumerate(pairs):
            try:
                if self.use_raw(p):
                    raw[k] = self.encode_raw(p)
                    continue
                pt, rc, rr = self.render_pair(p)
            except DataError as e:
                failed[k] = e
                continue
            except ModelError:  # the tokenizer, not the record: stop
                raise
            except Exception as e:  # jinja2 TemplateError and friends raised from inside the template
                failed[k] = DataError(f"{p.source}: the tokenizer's chat template rejected this conversation: "
                                      f"{type(e).__name__}: {e}", "chat template error")
                continue
            texts += [pt, pt + rc, pt + rr]
            sources += [p.source] * 3
            responses.append((rc, rr, [bool(m.get("tool_calls")) for m in p.answers()]))
        ids = iter(self.encode(texts, sources))
        response_texts = iter(responses)
        out = []
        for k in range(len(pairs)):
            if k in failed or k in raw:
                out.append(failed.get(k) or raw[k])
                continue
            p, fc, fr = next(ids), next(ids), next(ids)
            rc, rr, (tc, tr) = next(response_texts)
            prompt_ids, chosen = self._split(p, fc, rc, tc)
            _, rejected = self._split(p, fr, rr, tr)
            out.append(TokenizedPair(prompt_ids, chosen, rejected))
        return out


def encode_prompt_response(tokenizer, prompt_messages: list[dict], response: str | dict,
                           tools: list | None = None, **settings) -> tuple[list[int], list[int]]:
    """(prompt_ids, response_ids) for one answer (its text, or an assistant message with tool calls /
    reasoning_content), exactly as `load_preference_data` tokenizes pairs.

    `prompt_messages` are message dicts ending with a user turn (or a tool result). Not truncated.
    settings: ChatEncoder's (enable_thinking=...). To score many answers, build one
    `ChatEncoder(tokenizer)` and call its `encode_prompt_response` (saves a probe).
    """
    return ChatEncoder(tokenizer, **settings).encode_prompt_response(prompt_messages, response, tools)
