"""The comparison as data: two loaded models, one prompt (and the conversation before it), two answers
advancing in lock step, rewards.

No Gradio and no Markdown here: `Session` returns texts, token counts, speeds and rewards; the
handlers (`app.handlers`) turn them into the page's strings.

Both answers advance in lock step inside ONE generator (one token of SFT, one token of DPO, yield):
Gradio 6 runs two listeners of one button one after the other. Each answer is a `Stream` over the one
sampler (`minidpo.generation.Decoder`), so an answer here is token for token the one eval samples for
the same prompt, settings and seed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from minidpo.generation import Decoder, SamplingSettings, decode_answer, prompt_ids_for
from minidpo.models import LoadedModel, same_vocab
from minidpo.scoring import implicit_rewards, token_rewards


class CannotStart(ValueError):
    """The prompt or a setting cannot be used; the message says what to change."""


@dataclass(frozen=True)
class Answer:
    """One model's answer as the page shows it."""

    text: str
    n_tokens: int
    tokens_per_s: float
    done: bool
    stop_reason: str  # "end of turn", "max new tokens", or "" while running


class Stream:
    """One model's answer in progress: call `step()` until `done`; `seconds` is its own compute time."""

    def __init__(self, lm: LoadedModel, prompt_ids: list[int], settings: SamplingSettings):
        self.lm = lm
        self.decoder = Decoder(lm.model, [prompt_ids], settings, stop_ids=lm.stop_ids, pad_id=lm.pad_id)
        self.seconds = 0.0

    @property
    def tokens(self) -> list[int]:
        return self.decoder.tokens[0]

    @property
    def done(self) -> bool:
        return self.decoder.done

    def step(self) -> None:
        t0 = time.perf_counter()
        self.decoder.step()
        self.seconds += time.perf_counter() - t0

    def text(self) -> str:
        text = decode_answer(self.lm.tokenizer, self.tokens, self.lm.stop_ids)
        return text if self.done else text.rstrip("\ufffd")  # hide a half-decoded multi-byte character

    def answer(self) -> Answer:
        speed = len(self.tokens) / self.seconds if self.seconds > 0 else 0.0
        return Answer(self.text(), len(self.tokens), speed, self.done, self.decoder.stop_reason[0])


def prompt_messages(prompt: str, system: str | None, history=()) -> list[dict]:
    """system (if any) + the earlier turns + the new user turn."""
    messages = []
    if system and system.strip():
        messages.append({"role": "system", "content": system.strip()})
    messages += list(history)
    messages.append({"role": "user", "content": prompt.strip()})
    return messages


def settings_from(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed) -> SamplingSettings:
    """The page's setting widgets -> SamplingSettings (CannotStart on an empty or out-of-range one)."""
    if seed is None or max_new_tokens is None:
        raise CannotStart("Fill in every generation setting (seed, max new tokens).")
    s = SamplingSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p),
                         top_k=int(top_k), repetition_penalty=float(repetition_penalty), seed=int(seed))
    if problem := s.problem():
        raise CannotStart(problem)
    return s


@dataclass(frozen=True)
class Request:
    """A prompt ready to answer: its messages, the settings, and each model's prompt ids."""

    messages: list[dict]
    settings: SamplingSettings
    prompt_ids: dict  # role -> ids


class Session:
    """Two models answering side by side: `sft` is the left one and the reference of the implicit rewards,
    `dpo` the right one and their policy (the names of the SFT-vs-DPO page they came from), and beta."""

    def __init__(self, sft: LoadedModel, dpo: LoadedModel, *, beta: float, beta_source: str = "--beta",
                 shared_tokenizer: bool | None = None):
        self.sft, self.dpo = sft, dpo
        self.beta, self.beta_source = float(beta), beta_source
        self.shared_tokenizer = same_vocab(sft.tokenizer, dpo.tokenizer) if shared_tokenizer is None else shared_tokenizer
        limits = [m for m in (sft.max_positions, dpo.max_positions) if m]
        self.max_positions = min(limits) if limits else None

    def prepare(self, prompt, system, settings: SamplingSettings, history=()) -> Request:
        if prompt is None or not str(prompt).strip():
            raise CannotStart("Type a prompt first (the prompt box is empty).")
        messages = prompt_messages(str(prompt), system, history)
        ids = {lm.role: prompt_ids_for(lm.tokenizer, messages) for lm in (self.sft, self.dpo)}
        n = max(len(v) for v in ids.values())
        if self.max_positions is not None and n + settings.max_new_tokens > self.max_positions:
            raise CannotStart(
                f"The prompt is too long: {n} tokens + {settings.max_new_tokens} new tokens exceeds the "
                f"models' context of {self.max_positions} positions. Shorten the prompt or lower max new tokens.")
        return Request(messages, settings, ids)

    def run(self, request: Request) -> Iterator[tuple[Stream, Stream]]:
        """Advance both answers one token each per step; yields (sft, dpo) streams after every step."""
        sft = Stream(self.sft, request.prompt_ids[self.sft.role], request.settings)
        dpo = Stream(self.dpo, request.prompt_ids[self.dpo.role], request.settings)
        while not (sft.done and dpo.done):
            sft.step()
            dpo.step()
            yield sft, dpo

    def rewards(self, messages: list[dict], sft_text: str, dpo_text: str) -> tuple[float, float] | None:
        """Implicit DPO rewards (of the SFT answer, of the DPO answer), reference = SFT; None without a
        shared tokenizer."""
        if not self.shared_tokenizer:
            return None
        r = implicit_rewards(self.dpo.model, self.sft.model, self.sft.tokenizer, messages, [sft_text, dpo_text],
                             self.beta)
        return float(r[0]), float(r[1])

    def token_shares(self, messages: list[dict], texts: list[str]) -> list[tuple[list[str], list[float]]] | None:
        """Per answer: its tokens as text and each one's share β·(log πDPO(token) − log πSFT(token)) of the
        implicit reward (one scoring pass of each model per answer; the shares sum to the reward); None
        without a shared tokenizer."""
        if not self.shared_tokenizer:
            return None
        out = []
        for text in texts:
            ids, shares = token_rewards(self.dpo.model, self.sft.model, self.sft.tokenizer, messages, text, self.beta)
            prefixes = [self.sft.tokenizer.decode(ids[:k]).rstrip("\ufffd") for k in range(len(ids) + 1)]
            # each token's own text as what it adds to the decoded prefix: a character split over several
            # byte tokens shows on the token that completes it
            pieces = [b[len(a):] if b.startswith(a) else self.sft.tokenizer.decode([i])
                      for a, b, i in zip(prefixes, prefixes[1:], ids)]
            out.append((pieces, [float(x) for x in shares]))
        return out
