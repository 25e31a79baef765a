"""`PreferencePair` -> `TokenizedPair`: chat template, response-only mask, truncation, on-disk cache
(the rendering and encoding itself is `minidpo.data.chat`).

How a pair becomes tokens:

- prompt ids  = the prompt messages rendered with the tokenizer's chat template and
                `add_generation_prompt=True` (e.g. ChatML ends with "<|im_start|>assistant\\n"),
                encoded without adding special tokens (the template already has the ones it wants).
- response ids = the tokens of the full conversation (prompt + assistant answer) that come after the
                prompt text, cut right after the template's end-of-turn token (ChatML: "<|im_end|>",
                which is also its EOS), so that every response ends with that token exactly once and the
                template's trailing newline is not trained on. When the template appends no special token
                after the answer, the EOS token is appended instead.
- The template gets the record's tools and `enable_thinking`; answers may be tool calls (ending with
  the token the template ends a tool-call turn with) and carry reasoning (`answer_reasoning`). Where the
  template's conversation does not start with its generation prompt, `minidpo.data.boundary` decides
  (reasoning dropped with thinking off, answer put after an empty think block, or the pair dropped) and
  `stats.boundary` counts it per file.
- A tokenizer without a chat template uses the plain fallback (PLAIN_TEMPLATE): each message as
  "System: ...\\n\\n", "User: ...\\n\\n", "Assistant: ...\\n\\n", the prompt ending with "Assistant: ",
  the BOS token first when the tokenizer has one distinct from EOS, and the answer followed by EOS.

Raw string data (`chat_template="none"`, TRL's behaviour for string prompts): the prompt string and the
prompt + answer string are encoded as the tokenizer encodes text (its own special tokens, e.g. a BOS,
included), the answer's ids are what follows the prompt's, and the EOS token is appended. With the
default `chat_template="auto"`, a string prompt that already holds the template's turn marker (ChatML:
"<|im_start|>") was templated by its author and is used raw in the same way, never templated twice.

Truncation (per pair, both answers see the same prompt ids):

1. A prompt longer than `max_prompt_length` keeps its END (the latest turns); the earliest tokens go.
2. A response longer than `max_length - len(prompt)` is cut at that length (losing its EOS).
Unpaired examples (format "unpaired") keep their completion as chosen_ids and no rejected_ids;
`PreferenceDataset.labels` holds each one's label (None for a pair).

3. A pair whose prompt leaves no room for any response token, or whose two answers become identical
   after cutting, is dropped and counted in `stats.dropped` with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm.auto import tqdm

from minidpo import fsutil
from minidpo.errors import DataError

from .boundary import BOUNDARY
from .chat import ChatEncoder, TokenizedPair
from .files import data_files, read_tools
from .formats import PreferencePair, canonical_format, iter_pairs
from .listwise import PROMPT_FILLS, TokenizedList, cut_prompt, encode_list, row_unit, truncate_list

DEFAULT_CACHE_DIR = fsutil.cache_dir("data")
CACHE_VERSION = 4


# ----------------------------------------------------------------------------------------------------
# Truncation


def truncate_pair(pair: TokenizedPair, max_length: int, max_prompt_length: int | None = None):
    """Apply the truncation policy (module docstring). Returns (pair or None, what_happened).

    what_happened is a set of "prompt_truncated", "response_truncated", or a drop reason string.
    """
    events = set()
    prompt, room = cut_prompt(pair.prompt_ids, max_length, max_prompt_length, events)
    if room <= 0:
        return None, {PROMPT_FILLS}
    chosen, rejected = pair.chosen_ids[:room], pair.rejected_ids[:room]
    if len(chosen) < len(pair.chosen_ids) or len(rejected) < len(pair.rejected_ids):
        events.add("response_truncated")
        if chosen == rejected:
            return None, {"chosen identical to rejected after truncation"}
    return TokenizedPair(prompt, chosen, rejected), events


# ----------------------------------------------------------------------------------------------------
# Dataset and statistics


@dataclass
class DataStats:
    """What happened to the records of a preference file. `skipped`: bad records (on_bad_record="skip"),
    `dropped`: valid pairs removed by truncation; both map reason -> count."""

    format: str = ""
    read: int = 0
    kept: int = 0
    skipped: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)
    prompt_truncated: int = 0
    response_truncated: int = 0
    truncated: int = 0  # pairs with their prompt and/or a response cut
    examples: dict = field(default_factory=dict)  # reason -> first error message with that reason
    from_cache: bool = False
    template: str = ""  # what rendered the prompts (ChatEncoder.describe)
    raw_pairs: int = 0  # pairs encoded raw (chat_template none, or prompts already templated)
    boundary: dict = field(default_factory=dict)  # "file: what was done at the prompt/answer split" -> pairs
    unit: str = "pairs"  # what a kept row is: "pairs", or "lists" (K ranked answers)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        def reasons(d):
            return ", ".join(f"{k}: {v}" for k, v in sorted(d.items()))

        s = f"{self.kept} {self.unit} kept of {self.read} records read (format: {self.format})"
        if self.raw_pairs:
            s += f"; {self.raw_pairs} encoded raw, without the chat template"
        if self.skipped:
            s += f"; {self.n_skipped} skipped ({reasons(self.skipped)})"
        if self.truncated:
            s += (f"; {self.truncated} truncated ({self.prompt_truncated} prompts kept their end, "
                  f"{self.response_truncated} with a response cut)")
        if self.dropped:
            s += f"; {self.n_dropped} dropped ({reasons(self.dropped)})"
        return s + "".join(f"; {what} [{n} pairs]" for what, n in sorted(self.boundary.items()))


class PreferenceDataset(Sequence):
    """A list of TokenizedPair (listwise data: TokenizedList) with `.stats` (DataStats), `.sources`
    ("file.jsonl:12" per pair), `.labels`
    (an unpaired example's True / False, None for a pair) and `.lengths`."""

    def __init__(self, pairs: list[TokenizedPair], stats: DataStats, sources: list[str] | None = None,
                 labels: list[bool | None] | None = None):
        self.pairs = pairs
        self.stats = stats
        self.sources = sources if sources is not None else [""] * len(pairs)
        self.labels = labels if labels is not None else [None] * len(pairs)  # KTO's; None for a pair

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        return self.pairs[i]

    @property
    def lengths(self) -> list[int]:
        """Per pair, the length of its longer sequence: what `batch_plan` groups by."""
        return [p.max_length for p in self.pairs]

    def __repr__(self) -> str:
        return f"PreferenceDataset({self.stats.summary()})"


# ----------------------------------------------------------------------------------------------------
# Loading


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides token ids: the tokenizer's full definition (or vocab) and chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(repr((type(tokenizer).__name__, getattr(tokenizer, "chat_template", None), tokenizer.eos_token,
                   tokenizer.bos_token)).encode())
    return h.hexdigest()


def _cache_key(files: list[str], tokenizer, settings: dict) -> str:
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(repr((os.path.abspath(f), st.st_size, st.st_mtime_ns)).encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:24]


def _parts(row) -> list[list[int]]:
    if isinstance(row, TokenizedList):
        return [row.prompt_ids, *row.answer_ids]
    return [row.prompt_ids, row.chosen_ids, row.rejected_ids]


def _save_cache(file: str, ds: PreferenceDataset) -> None:
    """Every row's parts (a pair's 3, a listwise row's 1 + K) as one flat id array with their lengths."""
    parts = [_parts(p) for p in ds.pairs]
    lens = np.array([len(part) for row in parts for part in row], dtype=np.int64)
    ids = np.fromiter((t for row in parts for part in row for t in part), dtype=np.int64, count=int(lens.sum()))
    scores = [p.scores if isinstance(p, TokenizedList) else None for p in ds.pairs]
    meta = json.dumps({"stats": asdict(ds.stats), "sources": ds.sources, "labels": ds.labels, "scores": scores})
    with fsutil.atomic_file(file, suffix=".npz") as tmp:
        np.savez(tmp, ids=ids, lens=lens, meta=np.array(meta))


def _load_cache(file: str) -> PreferenceDataset | None:
    try:
        with np.load(file) as z:
            ids, lens, meta = z["ids"].tolist(), z["lens"].tolist(), json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError):
        return None
    pairs, i, j = [], 0, 0
    for scores in meta["scores"]:
        n = 3 if scores is None else 1 + len(scores)
        parts = []
        for length in lens[j:j + n]:
            parts.append(ids[i:i + length])
            i += length
        j += n
        pairs.append(TokenizedPair(*parts) if scores is None else TokenizedList(parts[0], parts[1:], scores))
    stats = DataStats(**meta["stats"])
    stats.from_cache = True
    return PreferenceDataset(pairs, stats, meta["sources"], meta.get("labels"))


def load_preference_data(
    path: str | os.PathLike,
    tokenizer,
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    data_format: str = "auto",
    on_bad_record: str = "error",
    max_bad_fraction: float | None = 0.1,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    progress: bool | None = None,
    log: Callable[[str], None] | None = print,
    chat_template: str = "auto",
    enable_thinking: bool | None = None,
    answer_reasoning: str = "as_given",
    tools: str | os.PathLike | None = None,
) -> PreferenceDataset:
    """Read, validate, tokenize and truncate a preference file (or a folder of .json/.jsonl files).

    Args:
        max_length: the most tokens of prompt + answer in one sequence.
        max_prompt_length: the most prompt tokens (a longer prompt keeps its end); None: no separate limit.
        data_format: "auto" (detected per file from its first record) or one of formats.FORMATS.
        on_bad_record: "error" raises the first DataError; "skip" skips bad records and counts them by reason.
        max_bad_fraction: raise a DataError when more than this fraction of the records read were skipped
            or dropped (a sign of the wrong format or too small a max_length), or when no pair is left;
            None checks nothing (for inspecting bad data).
        cache_dir: where prepared data is cached (key: files' path+size+mtime, tokenizer, settings);
            None disables the cache.
        progress: show a tqdm bar; None shows it for 2000 pairs or more.
        log: called with a one-line summary (counts of skipped / truncated / dropped); None is silent.
        chat_template: "auto" (the tokenizer's template; string prompts already templated are used raw)
            or "none" (raw prompt + answer + EOS for every pair, TRL's string data; see module docstring).
        enable_thinking: passed to the chat template (None: its default).
        answer_reasoning: "as_given", "strip" (from both answers) or "if_both" (kept where both have some).
        tools: a JSON file of tool schemas for the records without their own "tools".
    Raises:
        DataError (a ValueError) naming file, line and field.
    """
    if on_bad_record not in ("error", "skip"):
        raise ValueError(f'on_bad_record must be "error" or "skip", got {on_bad_record!r}')
    if max_length <= 1:
        raise ValueError(f"max_length must be > 1, got {max_length}")
    if max_prompt_length is not None and not 0 < max_prompt_length < max_length:
        raise ValueError(f"max_prompt_length must be in [1, max_length), got {max_prompt_length}")
    fmt = canonical_format(data_format)
    files = data_files(path)
    file_tools = read_tools(tools) if tools is not None else None
    settings = dict(version=CACHE_VERSION, max_length=max_length, max_prompt_length=max_prompt_length,
                    data_format=fmt, on_bad_record=on_bad_record, chat_template=chat_template,
                    enable_thinking=enable_thinking, answer_reasoning=answer_reasoning, tools=file_tools)
    cache_file = None
    if cache_dir is not None:
        cache_file = os.path.join(os.fspath(cache_dir), _cache_key(files, tokenizer, settings) + ".npz")
        ds = _load_cache(cache_file) if os.path.exists(cache_file) else None
        if ds is not None:
            _check_bad_fraction(ds.stats, max_bad_fraction, path)
            if log:
                log(f"preference data {path}: {ds.stats.summary()} [cached: {cache_file}]")
            return ds

    stats = DataStats()

    def skip(error: DataError) -> None:
        """A bad record: stop on it, or count it by reason (keeping the first message of each reason)."""
        if on_bad_record == "error":
            raise error
        stats.skipped[error.reason] = stats.skipped.get(error.reason, 0) + 1
        stats.examples.setdefault(error.reason, str(error))

    good: list[PreferencePair] = []
    formats = []
    for rec, rec_fmt, item in iter_pairs(path, fmt, file_tools):
        stats.read += 1
        if rec_fmt not in formats and rec_fmt != "unknown":
            formats.append(rec_fmt)
        if isinstance(item, DataError):
            skip(item)
            continue
        good.append(item)
    stats.format = "+".join(formats) or "unknown"

    enc = ChatEncoder(tokenizer, chat_template, enable_thinking=enable_thinking, answer_reasoning=answer_reasoning)
    stats.template = enc.describe()
    show = progress if progress is not None else len(good) >= 2000
    pairs, sources, labels = [], [], []
    chunk = 512
    bar = None
    if show:
        bar = tqdm(total=len(good), desc=f"tokenizing {os.path.basename(os.fspath(path))}", unit="pair")
    for start in range(0, len(good), chunk):
        batch = good[start:start + chunk]
        encoded = iter(enc.encode_pairs([p for p in batch if p.responses is None]))
        for p in batch:
            tp = next(encoded) if p.responses is None else encode_list(enc, p)
            if isinstance(tp, DataError) and tp.reason == BOUNDARY:  # reported per file (enc.notes)
                stats.dropped[BOUNDARY] = stats.dropped.get(BOUNDARY, 0) + 1
                stats.examples.setdefault(BOUNDARY, str(tp))
                continue
            if isinstance(tp, DataError):
                skip(tp)
                continue
            if p.label is not None:  # an unpaired example: its one completion, no rejected answer
                tp = TokenizedPair(tp.prompt_ids, tp.chosen_ids, [])
            truncate = truncate_list if isinstance(tp, TokenizedList) else truncate_pair
            tp, events = truncate(tp, max_length, max_prompt_length)
            if tp is None:
                (reason,) = events
                stats.dropped[reason] = stats.dropped.get(reason, 0) + 1
                stats.examples.setdefault(reason, f"{p.source}: {reason}")
                continue
            stats.prompt_truncated += "prompt_truncated" in events
            stats.response_truncated += "response_truncated" in events
            stats.truncated += bool(events)
            pairs.append(tp)
            sources.append(p.source)
            labels.append(p.label)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    stats.kept, stats.unit = len(pairs), row_unit(pairs)
    stats.raw_pairs = enc.raw_pairs
    stats.boundary = dict(enc.notes)
    ds = PreferenceDataset(pairs, stats, sources, labels)
    _check_bad_fraction(stats, max_bad_fraction, path)
    if cache_file is not None:
        _save_cache(cache_file, ds)
    if log:
        log(f"preference data {path}: {stats.summary()}")
    return ds


def _check_bad_fraction(stats: DataStats, max_bad_fraction: float | None, path) -> None:
    if max_bad_fraction is None:
        return
    bad = stats.n_skipped + stats.n_dropped
    if stats.kept == 0:
        raise DataError(f"{path}: no usable preference pairs ({stats.summary()}). "
                        + (f"First problem: {next(iter(stats.examples.values()))}" if stats.examples else ""),
                        "no pairs")
    if stats.read and bad / stats.read > max_bad_fraction:
        first = "; ".join(f"{v}" for v in list(stats.examples.values())[:3])
        raise DataError(
            f"{path}: {bad} of {stats.read} records ({bad / stats.read:.0%}) were skipped or dropped, more than "
            f"max_bad_fraction={max_bad_fraction:g} ({stats.summary()}). First problems: {first}. Check "
            "data_format, raise max_length / max_prompt_length, or raise max_bad_fraction if this is expected.",
            "too many bad records")
