"""Rendering and encoding: a pair's prompt and answers through the tokenizer's chat template (or the
plain fallback, or raw strings) into `TokenizedPair` ids with a response-only split. The rules are in
`minidpo.data.tokenize`'s docstring; truncation, the dataset and its cache live there."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from minidpo.config import CHAT_TEMPLATES
from minidpo.errors import DataError, ModelError, first_line

from .formats import PreferencePair

PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
_PROBE = "\u2063minidpo-probe\u2063"


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


class ChatEncoder:
    """Renders prompts and responses with a tokenizer's chat template (or the plain fallback) and encodes them.

    chat_template: "auto" (the tokenizer's template, or the plain fallback; prompts already templated
    are used raw) or "none" (every pair raw: string data only). `raw_pairs` counts the pairs encoded raw."""

    def __init__(self, tokenizer, chat_template: str = "auto"):
        if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
            raise ValueError(f"expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")
        if chat_template not in CHAT_TEMPLATES:
            raise ValueError(f"chat_template {chat_template!r}: choose one of {', '.join(CHAT_TEMPLATES)}")
        self.mode = chat_template
        self.raw_pairs = 0
        self.tok = tokenizer
        self.template = bool(getattr(tokenizer, "chat_template", None))
        self.eos_id = tokenizer.eos_token_id
        bos = tokenizer.bos_token_id
        self.bos_ids = [bos] if (not self.template and bos is not None and bos != self.eos_id) else []
        self.end_id = None  # the end-of-turn token the template writes after an answer
        self.marker = None  # the template's turn marker: a string prompt holding it is already templated
        if self.template and (chat_template == "auto" or self.eos_id is None):  # "none" needs them for no more
            self._probe_template()
        if self.end_id is None and self.eos_id is None:
            raise ModelError(f"{self.name}: the tokenizer has no EOS token and its chat template ends answers with "
                             "no special token: set tokenizer.eos_token (or a chat template) before preparing DPO data")

    @property
    def name(self) -> str:
        """The tokenizer's folder (or hub name), for messages."""
        return getattr(self.tok, "name_or_path", "") or "the tokenizer"

    def _probe_template(self) -> None:
        """Render a one-turn conversation to find `end_id` and `marker` (the first special token the
        template writes after an answer, and before a prompt)."""
        messages = [{"role": "user", "content": "hi"}]
        try:
            prompt = self.prompt_text(messages)
            text = self.response_text(messages, prompt, _PROBE)
        except Exception as e:  # jinja2's TemplateError and friends, raised from inside the template
            raise ModelError(f"{self.name}: its chat template fails on a one-turn conversation ({first_line(e)}): "
                             "fix the template in its tokenizer_config.json / chat_template.jinja, or use "
                             "chat_template none (string data only)") from e
        tail = text[text.find(_PROBE) + len(_PROBE):] if _PROBE in text else ""
        self.end_id = next(iter(self._special_ids(tail)), None)
        first = next(iter(self._special_ids(prompt)), None)
        self.marker = self.tok.convert_ids_to_tokens(first) if first is not None else None

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

    def prompt_text(self, messages: list[dict]) -> str:
        if self.template:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{PLAIN_ROLES[m['role']]}: {m['content']}\n\n" for m in messages) + "Assistant: "

    def response_text(self, messages: list[dict], prompt_text: str, response: str) -> str:
        """The text the template writes after `prompt_text` for this answer."""
        if self.template:
            full = self.tok.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                                tokenize=False)
            if full.startswith(prompt_text):
                return full[len(prompt_text):]
        return response  # plain fallback, or a template whose prompt is not a prefix of the conversation

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

    def finish_response(self, ids: list[int]) -> list[int]:
        """Cut after the end-of-turn token (keeping it once), or append EOS when the text has none."""
        end = self.end_id if self.end_id is not None else self.eos_id
        if end in ids:
            last = len(ids) - 1 - ids[::-1].index(end)
            return ids[: last + 1]
        return ids + [end]

    def encode_prompt_response(self, prompt_messages: list[dict], response: str) -> tuple[list[int], list[int]]:
        """(prompt_ids, response_ids) for one answer; see the module function of the same name."""
        pt = self.prompt_text(prompt_messages)
        rt = self.response_text(prompt_messages, pt, response)
        p, full = self.encode([pt, pt + rt])
        return self._split(p, full, rt)

    def _split(self, prompt_ids: list[int], full_ids: list[int], response_text: str) -> tuple[list[int], list[int]]:
        """Response ids = the tokens of the whole conversation after the prompt's tokens.

        If a token straddles the boundary (the prompt's tokens are not a prefix of the conversation's),
        the response text is encoded on its own instead, so the prompt ids stay those of the prompt.
        """
        n = len(prompt_ids)
        if full_ids[:n] == prompt_ids:
            response = full_ids[n:]
        else:
            response = self.encode([response_text])[0]
        return self.bos_ids + prompt_ids, self.finish_response(response)

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

        A pair the chat template refuses (e.g. a template that raises on a system message) comes back as
        a DataError naming its source, so that on_bad_record="skip" can skip it.
        """
        texts, sources, responses, failed, raw = [], [], [], {}, {}
        for k, p in enumerate(pairs):
            try:
                if self.use_raw(p):
                    raw[k] = self.encode_raw(p)
                    continue
            except DataError as e:
                failed[k] = e
                continue
            try:
                pt = self.prompt_text(p.prompt_messages)
                rc = self.response_text(p.prompt_messages, pt, p.chosen)
                rr = self.response_text(p.prompt_messages, pt, p.rejected)
                texts += [pt, pt + rc, pt + rr]
                sources += [p.source] * 3
                responses.append((rc, rr))
            except Exception as e:  # jinja2 TemplateError and friends raised from inside the template
                failed[k] = DataError(f"{p.source}: the tokenizer's chat template rejected this conversation: "
                                      f"{type(e).__name__}: {e}", "chat template error")
        ids = iter(self.encode(texts, sources))
        response_texts = iter(responses)
        out = []
        for k in range(len(pairs)):
            if k in failed or k in raw:
                out.append(failed.get(k) or raw[k])
                continue
            p, fc, fr = next(ids), next(ids), next(ids)
            rc, rr = next(response_texts)
            prompt_ids, chosen = self._split(p, fc, rc)
            _, rejected = self._split(p, fr, rr)
            out.append(TokenizedPair(prompt_ids, chosen, rejected))
        return out


def encode_prompt_response(tokenizer, prompt_messages: list[dict], response: str) -> tuple[list[int], list[int]]:
    """(prompt_ids, response_ids) for one answer, exactly as `load_preference_data` tokenizes pairs.

    `prompt_messages` are {"role", "content"} dicts ending with a user turn. Not truncated. To score many
    answers, build one `ChatEncoder(tokenizer)` and call its `encode_prompt_response` (saves a probe).
    """
    return ChatEncoder(tokenizer).encode_prompt_response(prompt_messages, response)
