"""The one sampler: chat prompts -> answers, batched for eval, one token at a time for the app.

    answers = generate(model, tokenizer, prompts_messages, max_new_tokens=160, temperature=0.7, seed=0)
    decoder = Decoder(model, [prompt_ids], settings, stop_ids=..., pad_id=...)   # the app: step() per token

Everything that samples goes through `Decoder`, so eval and the app give the same answer, token for
token, for the same prompt, settings and seed:

- prompts are tokenized exactly as the trainer tokenizes them (`minidpo.data.ChatEncoder`), left
  padded, with a KV cache;
- filters, in this order: repetition penalty (CTRL's, on every token of the row so far, prompt
  included), temperature (0 = greedy), top-k (0 = off), top-p (the smallest set of tokens whose
  probability reaches top_p);
- randomness: each row draws from its own `torch.Generator` seeded with `seed`, so an answer depends
  on its prompt, the model, the settings and the seed only: not on the other rows of its batch, not on
  what else the process did with torch's global RNG;
- stop rule: a row stops at any of `stop_ids` (`minidpo.models.stop_ids`: EOS and the chat template's
  end-of-turn token, plus the token it ends a tool-call turn with when that is another one, as Llama
  3.1's <|eom_id|>), or after `max_new_tokens` sampled tokens (the stop token counts).

A hand-written loop rather than transformers' `generate`: `generate` draws from torch's global RNG
(no per-row generator) and cannot advance two models in lock step inside one Gradio handler.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from minidpo.data import ChatEncoder
from minidpo.logprobs import forward_kwargs
from minidpo.models import pad_id as tokenizer_pad_id
from minidpo.models import stop_ids as tokenizer_stop_ids


@dataclass(frozen=True)
class SamplingSettings:
    """One set of sampling settings (and defaults) for eval, the app and the example picker."""

    max_new_tokens: int = 160
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0

    def problem(self) -> str | None:
        """A message for people when a setting is out of range, else None."""
        if self.max_new_tokens < 1:
            return f"Max new tokens (max_new_tokens) must be at least 1, got {self.max_new_tokens}."
        if self.temperature < 0:
            return f"Temperature (temperature) must be >= 0 (0 means greedy), got {self.temperature}."
        if not 0 < self.top_p <= 1:
            return f"Top-p (top_p) must be in (0, 1], got {self.top_p}."
        if self.top_k < 0:
            return f"Top-k (top_k) must be >= 0 (0 turns it off), got {self.top_k}."
        if self.repetition_penalty <= 0:
            return f"Repetition penalty (repetition_penalty) must be > 0 (1 turns it off), got {self.repetition_penalty}."
        return None

    def check(self) -> SamplingSettings:
        if problem := self.problem():
            raise ValueError(problem)
        return self

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULTS = SamplingSettings()


def prompt_ids_for(tokenizer, messages: list[dict], encoder=None, tools: list | None = None) -> list[int]:
    """Token ids of a chat prompt, ending where the assistant's answer starts (as in training).

    `encoder`: a `minidpo.data.ChatEncoder(tokenizer)` to reuse over many prompts (optional; it carries
    settings such as enable_thinking). `tools`: the tool schemas the template shows the model."""
    encoder = encoder or ChatEncoder(tokenizer)
    return [int(t) for t in encoder.encode_prompt_response(messages, "", tools=tools)[0]]


# ------------------------------------------------------------------------------------------- filters
def process_logits(logits: torch.Tensor, seen: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """(B, V) next-token logits -> float32 logits to sample from: repetition penalty, temperature,
    top-k, top-p (filtered entries are -inf). seen: (B, V) bool, the tokens already in each row.
    With temperature 0 only the penalty is applied (greedy takes the argmax)."""
    logits = logits.float()
    if s.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / s.repetition_penalty, logits * s.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if s.temperature == 0:
        return logits
    logits = logits / s.temperature
    if 0 < s.top_k < logits.size(-1):
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs >= s.top_p  # the mass before a token already reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def draw(logits: torch.Tensor, s: SamplingSettings, generators: list[torch.Generator]) -> torch.Tensor:
    """One token id per row of processed (B, V) logits: the argmax when greedy, else a sample by inverse
    CDF from one uniform number of each row's own generator (so a row's draw never depends on the
    other rows, and the whole batch syncs with the device once per step). Returns (B,) long."""
    if s.temperature == 0:
        return logits.argmax(-1)
    cdf = torch.softmax(logits, dim=-1).cumsum(-1)
    u = torch.cat([torch.rand(1, generator=g, device=logits.device) for g in generators])
    # the first token whose cumulative probability exceeds u * total: never one of probability 0
    picked = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1)
    return picked.clamp(max=logits.size(-1) - 1)


def sample_next(logits: torch.Tensor, seen_ids: torch.Tensor, s: SamplingSettings, generator: torch.Generator) -> int:
    """The next token for one row: (V,) logits, the ids already in the row -> token id (as `Decoder` does)."""
    seen = torch.zeros((1, logits.numel()), dtype=torch.bool)
    seen[0, seen_ids.long()] = True
    return int(draw(process_logits(logits.detach().cpu()[None], seen, s), s, [generator])[0])


# ----------------------------------------------------------------------------------------- the loop
def _forward_keywords(model) -> tuple[str, bool]:
    """(name of the KV-cache keyword, whether `logits_to_keep` is taken), from the one per-class lookup
    of a forward's keywords in `minidpo.logprobs`. The cache keyword is `cache` in recent transformers 5
    releases, `past_key_values` before."""

    params = forward_kwargs(model)
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


class Decoder:
    """Sampling state of a batch of prompts. `step()` adds one token to every unfinished row.

    tokens[i]: the answer tokens of row i so far (without the stop token); finished[i] with
    stop_reason[i] ("end of turn" or "max new tokens") once row i is done; `done` when all are.
    """

    def __init__(self, model, prompts_ids: list[list[int]], settings: SamplingSettings, *,
                 stop_ids, pad_id: int):
        self.model, self.settings = model, settings.check()
        self.stop_ids = frozenset(int(t) for t in stop_ids)
        self.device = next(model.parameters()).device
        self._cache_kw, self._logits_to_keep = _forward_keywords(model)
        B, width = len(prompts_ids), max(len(r) for r in prompts_ids)
        ids = torch.full((B, width), int(pad_id), dtype=torch.long)
        mask = torch.zeros((B, width), dtype=torch.long)
        for i, r in enumerate(prompts_ids):  # left padding: every row's last prompt token is at the end
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        self._ids, self._mask = ids.to(self.device), mask.to(self.device)
        self._pos = (self._mask.cumsum(-1) - 1).clamp(min=0)
        self._cache, self._seen, self._pad = None, None, int(pad_id)
        self._generators = [torch.Generator(device=self.device).manual_seed(int(settings.seed)) for _ in range(B)]
        self.tokens: list[list[int]] = [[] for _ in range(B)]
        self.finished = [False] * B
        self.stop_reason = [""] * B
        self.stop_token: list[int | None] = [None] * B
        self.n_sampled = 0

    @property
    def done(self) -> bool:
        return all(self.finished)

    @torch.no_grad()
    def step(self) -> None:
        if self.done:
            return
        kwargs = {"use_cache": True, self._cache_kw: self._cache}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=self._ids, attention_mask=self._mask, position_ids=self._pos, **kwargs)
        self._cache = getattr(out, self._cache_kw, None)
        logits = out.logits[:, -1, :]
        if self._seen is None:  # every prompt token counts as seen for the repetition penalty
            self._seen = torch.zeros(logits.shape, dtype=torch.bool, device=self.device)
            rows = torch.arange(len(self.tokens), device=self.device)[:, None].expand_as(self._ids)
            real = self._mask.bool()
            self._seen[rows[real], self._ids[real]] = True
        sampled = draw(process_logits(logits, self._seen, self.settings), self.settings, self._generators)
        self.n_sampled += 1
        nxt = []
        for i, token in enumerate(sampled.tolist()):
            if self.finished[i]:
                nxt.append(self._pad)
                continue
            nxt.append(token)
            self._seen[i, token] = True
            if token in self.stop_ids:
                self.finished[i], self.stop_reason[i], self.stop_token[i] = True, "end of turn", token
                continue
            self.tokens[i].append(token)
            if self.n_sampled >= self.settings.max_new_tokens:
                self.finished[i], self.stop_reason[i] = True, "max new tokens"
        step_ids = torch.tensor(nxt, dtype=torch.long, device=self.device)[:, None]
        self._ids, self._pos = step_ids, self._pos[:, -1:] + 1
        self._mask = torch.cat([self._mask, torch.ones_like(step_ids)], dim=1)

    def sampled_ids(self, i: int) -> list[int]:
        """Row i's sampled ids as the model produced them: the answer, then its stop token if it stopped."""
        return self.tokens[i] + ([self.stop_token[i]] if self.stop_token[i] is not None else [])


def _default_stop_ids(tokenizer):
    return tokenizer_stop_ids(tokenizer)


def generate_ids(model, tokenizer, prompts_ids: list[list[int]], *, settings: SamplingSettings | None = None,
                 stop_ids=None, pad_id: int | None = None, batch_size: int = 16, **overrides) -> list[list[int]]:
    """New token ids for each prompt, ending with the stop token when the row stopped by itself.

    settings: a SamplingSettings (default `DEFAULTS`); keyword overrides (temperature=0, seed=3, ...)
    replace single fields. stop_ids / pad_id default to `minidpo.models.stop_ids(tokenizer)` / its pad.
    """
    settings = SamplingSettings(**{**(settings or DEFAULTS).to_dict(), **overrides}).check()
    stops = _default_stop_ids(tokenizer) if stop_ids is None else stop_ids
    pad = tokenizer_pad_id(tokenizer) if pad_id is None else pad_id
    was_training = model.training
    model.eval()
    results: list[list[int]] = []
    try:
        for start in range(0, len(prompts_ids), batch_size):
            decoder = Decoder(model, prompts_ids[start:start + batch_size], settings, stop_ids=stops, pad_id=pad)
            while not decoder.done:
                decoder.step()
            results += [decoder.sampled_ids(i) for i in range(len(decoder.tokens))]
    finally:
        model.train(was_training)
    return results


def decode_answer(tokenizer, ids: list[int], stop_ids=None) -> str:
    """Text of generated ids, up to the first stop token, without special tokens."""
    stops = _default_stop_ids(tokenizer) if stop_ids is None else stop_ids
    cut = next((k for k, t in enumerate(ids) if t in stops), len(ids))
    return tokenizer.decode(ids[:cut], skip_special_tokens=True).strip()


def generate(model, tokenizer, prompts_messages: list[list[dict]], *, settings: SamplingSettings | None = None,
             stop_ids=None, batch_size: int = 16, **overrides) -> list[str]:
    """One answer per chat prompt (a list of {"role", "content"} messages ending with a user turn).

    Deterministic for a given (model, prompt, settings, seed); greedy when temperature == 0.
    """
    encoder = ChatEncoder(tokenizer)
    stops = _default_stop_ids(tokenizer) if stop_ids is None else stop_ids
    prompts_ids = [prompt_ids_for(tokenizer, m, encoder) for m in prompts_messages]
    ids = generate_ids(model, tokenizer, prompts_ids, settings=settings, stop_ids=stops, batch_size=batch_size,
                       **overrides)
    return [decode_answer(tokenizer, x, stops) for x in ids]
