"""`PreferencePair` -> `TokenizedPair`: chat template, response-only mask, truncation, on-disk cache.

How a pair becomes tokens:

- prompt ids  = the prompt messages rendered with the tokenizer's chat template and
                `add_generation_prompt=True` (e.g. ChatML ends with "<|im_start|>assistant\\n"),
                encoded without adding special tokens (the template already has the ones it wants).
- response ids = the tokens of the full conversation (prompt + assistant answer) that come after the
                prompt text, cut right after the template's end-of-turn token (ChatML: "<|im_end|>",
                which is also its EOS), so that every response ends with that token exactly once and the
                template's trailing newline is not trained on. When the template appends no special token
                after the answer, the EOS token is appended instead.
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
3. A pair whose prompt leaves no room for any response token, or whose two answers become identical
   after cutting, is dropped and counted in `stats.dropped` with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from .formats import DataError, PreferencePair, canonical_format, iter_pairs

PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
DEFAULT_CACHE_DIR = os.path.join(".cache", "minidpo", "data")
CACHE_VERSION = 2
CHAT_TEMPLATES = ("auto", "none")
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


# ----------------------------------------------------------------------------------------------------
# Rendering and encoding


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
        if self.template:
            probe_prompt = [{"role": "user", "content": "hi"}]
            text = self.response_text(probe_prompt, self.prompt_text(probe_prompt), _PROBE)
            tail = text[text.find(_PROBE) + len(_PROBE):] if _PROBE in text else ""
            special = set(getattr(tokenizer, "all_special_ids", []) or [])
            special.update(getattr(tokenizer, "added_tokens_decoder", {}) or {})
            self.end_id = next((t for t in self.encode([tail])[0] if t in special), None)
        self.marker = None  # the template's turn marker: a string prompt holding it is already templated
        if self.template:
            ids = self.encode([self.prompt_text([{"role": "user", "content": "hi"}])])[0]
            special = set(getattr(tokenizer, "all_special_ids", []) or []) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
            first = next((t for t in ids if t in special), None)
            self.marker = tokenizer.convert_ids_to_tokens(first) if first is not None else None
        if self.end_id is None and self.eos_id is None:
            raise ValueError("the tokenizer has no EOS token and its chat template ends answers with no special "
                             "token: set tokenizer.eos_token (or a chat template) before preparing DPO data")

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

    def encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tok(texts, add_special_tokens=False)["input_ids"]

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
        p, fc, fr = self.tok([prompt, prompt + chosen, prompt + rejected])["input_ids"]
        out = []
        for full, answer in ((fc, chosen), (fr, rejected)):
            ids = full[len(p):] if full[:len(p)] == p else self.tok(answer, add_special_tokens=False)["input_ids"]
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
        texts, responses, failed, raw = [], [], {}, {}
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
                responses.append((rc, rr))
            except Exception as e:  # jinja2 TemplateError and friends raised from inside the template
                failed[k] = DataError(f"{p.source}: the tokenizer's chat template rejected this conversation: "
                                      f"{type(e).__name__}: {e}", "chat template error")
        ids = iter(self.encode(texts))
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


# ----------------------------------------------------------------------------------------------------
# Truncation


def truncate_pair(pair: TokenizedPair, max_length: int, max_prompt_length: int | None = None):
    """Apply the truncation policy (module docstring). Returns (pair or None, what_happened).

    what_happened is a set of "prompt_truncated", "response_truncated", or a drop reason string.
    """
    events = set()
    prompt = pair.prompt_ids
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        prompt = prompt[len(prompt) - max_prompt_length:]
        events.add("prompt_truncated")
    room = max_length - len(prompt)
    if room <= 0:
        return None, {"prompt fills max_length (empty response after truncation)"}
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

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        def reasons(d):
            return ", ".join(f"{k}: {v}" for k, v in sorted(d.items()))

        s = f"{self.kept} pairs kept of {self.read} records read (format: {self.format})"
        if self.raw_pairs:
            s += f"; {self.raw_pairs} encoded raw, without the chat template"
        if self.skipped:
            s += f"; {self.n_skipped} skipped ({reasons(self.skipped)})"
        if self.truncated:
            s += (f"; {self.truncated} truncated ({self.prompt_truncated} prompts kept their end, "
                  f"{self.response_truncated} with a response cut)")
        if self.dropped:
            s += f"; {self.n_dropped} dropped ({reasons(self.dropped)})"
        return s


class PreferenceDataset(Sequence):
    """A list of TokenizedPair with `.stats` (DataStats), `.sources` ("file.jsonl:12" per pair) and `.lengths`."""

    def __init__(self, pairs: list[TokenizedPair], stats: DataStats, sources: list[str] | None = None):
        self.pairs = pairs
        self.stats = stats
        self.sources = sources if sources is not None else [""] * len(pairs)

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


def _save_cache(file: str, ds: PreferenceDataset) -> None:
    import numpy as np

    lens = np.array([[len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)] for p in ds.pairs],
                    dtype=np.int64).reshape(-1, 3)
    ids = np.fromiter((t for p in ds.pairs for part in (p.prompt_ids, p.chosen_ids, p.rejected_ids) for t in part),
                      dtype=np.int64, count=int(lens.sum()))
    meta = json.dumps({"stats": asdict(ds.stats), "sources": ds.sources})
    os.makedirs(os.path.dirname(file), exist_ok=True)
    tmp = f"{file}.{os.getpid()}.tmp.npz"
    np.savez(tmp, ids=ids, lens=lens, meta=np.array(meta))
    os.replace(tmp, file)


def _load_cache(file: str) -> PreferenceDataset | None:
    import numpy as np

    try:
        with np.load(file) as z:
            ids, lens, meta = z["ids"].tolist(), z["lens"].tolist(), json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError):
        return None
    pairs, i = [], 0
    for a, b, c in lens:
        pairs.append(TokenizedPair(ids[i:i + a], ids[i + a:i + a + b], ids[i + a + b:i + a + b + c]))
        i += a + b + c
    stats = DataStats(**meta["stats"])
    stats.from_cache = True
    return PreferenceDataset(pairs, stats, meta["sources"])


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
    from .files import data_files

    files = data_files(path)
    settings = dict(version=CACHE_VERSION, max_length=max_length, max_prompt_length=max_prompt_length,
                    data_format=fmt, on_bad_record=on_bad_record, chat_template=chat_template)
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
    for rec, rec_fmt, item in iter_pairs(path, fmt):
        stats.read += 1
        if rec_fmt not in formats and rec_fmt != "unknown":
            formats.append(rec_fmt)
        if isinstance(item, DataError):
            skip(item)
            continue
        good.append(item)
    stats.format = "+".join(formats) or "unknown"

    enc = ChatEncoder(tokenizer, chat_template)
    stats.template = enc.describe()
    show = progress if progress is not None else len(good) >= 2000
    pairs, sources = [], []
    chunk = 512
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(good), desc=f"tokenizing {os.path.basename(os.fspath(path))}", unit="pair")
    for start in range(0, len(good), chunk):
        batch = good[start:start + chunk]
        for p, tp in zip(batch, enc.encode_pairs(batch)):
            if isinstance(tp, DataError):
                skip(tp)
                continue
            tp, events = truncate_pair(tp, max_length, max_prompt_length)
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
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    stats.kept = len(pairs)
    stats.raw_pairs = enc.raw_pairs
    ds = PreferenceDataset(pairs, stats, sources)
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
