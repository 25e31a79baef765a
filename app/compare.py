"""SFT vs DPO, side by side: one prompt, two streamed answers, and the reward DPO implicitly gives each.

    python -m app.compare                      # runs/sft/export vs the newest runs/dpo*/export*
    python -m app.compare --sft DIR --dpo DIR  # any two Hugging Face folders sharing a tokenizer

Shape of the file: checkpoint discovery -> model loading -> a token-by-token sampler -> `Comparer`
(the three event handlers, plain Python generators/functions you can call in a test) -> `build_app`
(the Gradio layout wiring them) -> `main` (the CLI).

Both answers advance in lock-step inside ONE generator handler (one token of SFT, one token of DPO,
yield): Gradio 6 runs two listeners of one button one after the other, and two threads sharing
torch's global RNG would make sampling irreproducible. Each model samples from its own
`torch.Generator` seeded with the user's seed, so the same seed gives the same answers.
"""

from __future__ import annotations

import os

# Offline before gradio / transformers are imported: no analytics, no version check, no hub.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import secrets  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from minidpo.data import ChatEncoder, encode_prompt_response  # noqa: E402

DEFAULT_RUNS_DIR = "runs"
DEFAULT_VOTES = "runs/votes.jsonl"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_BETA = 0.1


class CheckpointError(RuntimeError):
    """A model folder is missing or unusable; the message says what to run or pass instead."""


# ---------------------------------------------------------------------------------------------------
# Which folders to compare
# ---------------------------------------------------------------------------------------------------


def resolve_model_dirs(sft: str | None = None, dpo: str | None = None, runs_dir: str = DEFAULT_RUNS_DIR):
    """(sft_dir, dpo_dir) as Paths: the given folders, or the defaults of a local run.

    Defaults: SFT = `<runs_dir>/sft/export`; DPO = the newest `<runs_dir>/dpo*/export*` folder holding
    a config.json (newest by modification time). Raises CheckpointError saying what to run when missing.
    """
    runs = Path(runs_dir)
    if sft:
        sft_dir = Path(_hf_folder(sft))
    else:
        sft_dir = runs / "sft" / "export"
        if not (sft_dir / "config.json").is_file():
            raise CheckpointError(
                f"no SFT model at {sft_dir}: run `make sft` first, or pass --sft DIR (SFT=DIR for make app)"
            )
    if dpo:
        dpo_dir = Path(_hf_folder(dpo))
    else:
        found = [p for p in runs.glob("dpo*/export*") if (p / "config.json").is_file()]
        if not found:
            raise CheckpointError(
                f"no DPO export under {runs}/dpo*/export*: run `make train` first, "
                "or pass --dpo DIR (DPO=DIR for make app)"
            )
        dpo_dir = max(found, key=lambda p: (p / "config.json").stat().st_mtime)
    return sft_dir, dpo_dir


def _hf_folder(path: str) -> str:
    """A .gguf file is converted once into a cached Hugging Face folder (minidpo.gguf); folders pass as they are."""
    if not str(path).endswith(".gguf"):
        return path
    from minidpo.gguf import GGUFError, ensure_hf_folder

    try:
        return ensure_hf_folder(path)
    except GGUFError as exc:
        raise CheckpointError(str(exc)) from exc


def check_model_dir(path: str | Path, role: str) -> Path:
    """Fail early, in one line, on a folder that cannot be a Hugging Face causal-LM export."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{role} model folder not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"{role} model path is not a folder: {path}")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{role} model folder {path} has no config.json (is it a Hugging Face export?)")
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise CheckpointError(f"{role} model folder {path} has no tokenizer files (tokenizer.json)")
    from transformers import AutoConfig

    try:  # cheap, and catches a broken folder before minutes of loading the other model's weights
        AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - turned into one line for people
        raise CheckpointError(f"could not load the {role} model from {path}: {_first_line(exc)}") from exc
    return path


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    role: str  # "SFT" or "DPO"
    path: str
    model: object
    tokenizer: object
    stop_ids: set[int]
    max_positions: int | None


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"--device {device} asked for, but this torch sees no CUDA device")
    return torch.device(device)


def _pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_model(path: str | Path, role: str, *, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load one export (model in eval mode + tokenizer) from local files only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = check_model_dir(path, role)
    dev = _pick_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=_pick_dtype(dtype, dev))
    except Exception as exc:  # noqa: BLE001 - turned into one line for people
        raise CheckpointError(f"could not load the {role} model from {path}: {_first_line(exc)}") from exc
    model.to(dev).eval()

    stop_ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            stop_ids.update([eos] if isinstance(eos, int) else eos)
    try:  # the end-of-turn token the trainer puts after every answer (ChatML: <|im_end|>)
        end_id = ChatEncoder(tokenizer).end_id
    except ValueError as exc:
        raise CheckpointError(f"{role} tokenizer in {path} is unusable: {exc}") from exc
    if end_id is not None:
        stop_ids.add(int(end_id))

    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is None and 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        max_positions = tokenizer.model_max_length
    return LoadedModel(role, str(path), model, tokenizer, stop_ids, max_positions)


def same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab()


# ---------------------------------------------------------------------------------------------------
# Sampling, one token at a time
# ---------------------------------------------------------------------------------------------------


@dataclass
class GenSettings:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    seed: int = 0

    def problem(self) -> str | None:
        """A message for people when a setting is out of range, else None."""
        if self.max_new_tokens < 1:
            return "Max new tokens must be at least 1."
        if self.temperature < 0:
            return "Temperature must be >= 0 (0 means greedy)."
        if not 0 < self.top_p <= 1:
            return "Top-p must be in (0, 1]."
        if self.top_k < 0:
            return "Top-k must be >= 0 (0 turns it off)."
        if self.repetition_penalty <= 0:
            return "Repetition penalty must be > 0 (1 turns it off)."
        return None


def sample_next(logits: torch.Tensor, seen: torch.Tensor, s: GenSettings, generator: torch.Generator) -> int:
    """Next token id from (V,) logits: repetition penalty -> temperature -> top-k -> top-p -> sample.

    Repetition penalty is CTRL's (as in transformers): every token already in `seen` has its logit
    divided by the penalty when positive, multiplied when negative. Temperature 0 is greedy.
    Sampling happens on the CPU with `generator`, so results do not depend on the device's RNG.
    """
    logits = logits.detach().float().cpu().clone()
    if s.repetition_penalty != 1.0 and seen.numel():
        idx = seen.cpu().unique()
        vals = logits[idx]
        logits[idx] = torch.where(vals < 0, vals * s.repetition_penalty, vals / s.repetition_penalty)
    if s.temperature <= 0:
        return int(logits.argmax())
    logits = logits / s.temperature
    if 0 < s.top_k < logits.numel():
        kth = torch.topk(logits, s.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > s.top_p  # keep the smallest prefix reaching top_p (>= 1 token)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(0, order, sorted_logits)
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def _decode_step(model, input_ids: torch.Tensor, cache):
    """One forward pass with a KV cache -> (logits of the last position, updated cache).

    transformers renamed `past_key_values` to `cache` (5.2x); accept either spelling.
    """
    params = _forward_params(type(model))
    kwargs = {"cache" if "cache" in params else "past_key_values": cache, "use_cache": True}
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1
    out = model(input_ids=input_ids, **kwargs)
    new_cache = out.get("cache")
    if new_cache is None:
        new_cache = out.get("past_key_values")
    return out.logits[:, -1:], new_cache


@functools.lru_cache(maxsize=None)
def _forward_params(model_class) -> frozenset:
    return frozenset(inspect.signature(model_class.forward).parameters)


@dataclass
class Stream:
    """One model's answer in progress: call `step()` until `done`."""

    lm: LoadedModel
    prompt_ids: list[int]
    settings: GenSettings
    tokens: list[int] = field(default_factory=list)
    seconds: float = 0.0
    done: bool = False
    stop_reason: str = ""
    _past: object = None
    _seen: torch.Tensor | None = None
    _generator: torch.Generator | None = None

    def __post_init__(self):
        self._generator = torch.Generator().manual_seed(int(self.settings.seed))
        self._seen = torch.tensor(self.prompt_ids, dtype=torch.long)

    @torch.no_grad()
    def step(self) -> None:
        if self.done:
            return
        t0 = time.perf_counter()
        device = next(self.lm.model.parameters()).device
        fresh = self.prompt_ids if self._past is None else self.tokens[-1:]
        logits, self._past = _decode_step(self.lm.model, torch.tensor([fresh], dtype=torch.long, device=device),
                                          self._past)
        token = sample_next(logits[0, -1], self._seen, self.settings, self._generator)
        self.seconds += time.perf_counter() - t0
        if token in self.lm.stop_ids:
            self.done, self.stop_reason = True, "end of turn"
            return
        self.tokens.append(token)
        self._seen = torch.cat([self._seen, torch.tensor([token])])
        if len(self.tokens) >= self.settings.max_new_tokens:
            self.done, self.stop_reason = True, "max new tokens"

    def text(self) -> str:
        text = self.lm.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not self.done:  # hide a half-decoded multi-byte character until its other bytes arrive
            text = text.rstrip("\ufffd")
        return text

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0


def prompt_messages(prompt: str, system: str | None) -> list[dict]:
    messages = []
    if system and system.strip():
        messages.append({"role": "system", "content": system.strip()})
    messages.append({"role": "user", "content": prompt.strip()})
    return messages


def generation_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The prompt ids exactly as the trainer builds them (chat template, or its plain fallback)."""
    prompt_ids, _ = encode_prompt_response(tokenizer, messages, "")
    return list(prompt_ids)


# ---------------------------------------------------------------------------------------------------
# The handlers
# ---------------------------------------------------------------------------------------------------


def _warn(message: str) -> None:
    """A toast in the page when called from a Gradio event; a Python warning in a plain call."""
    import gradio as gr

    gr.Warning(message)


STOPPED = "**Stopped:** partial answers kept, no rewards computed."


def _fmt_reward(r: float | None) -> str:
    return "n/a" if r is None else f"{r:+.3f}"


class Comparer:
    """Holds the two models and implements the app's handlers (usable without a browser)."""

    def __init__(self, sft: LoadedModel, dpo: LoadedModel, *, beta: float = DEFAULT_BETA, votes_path=DEFAULT_VOTES):
        self.sft, self.dpo = sft, dpo
        self.beta = float(beta)
        self.votes_path = Path(votes_path)
        self.shared_tokenizer = same_tokenizer(sft.tokenizer, dpo.tokenizer)
        limits = [m for m in (sft.max_positions, dpo.max_positions) if m]
        self.max_positions = min(limits) if limits else None
        self._vote_lock = threading.Lock()
        self._stop_flags: dict[str | None, threading.Event] = {}

    # -- stopping -------------------------------------------------------------------------------
    # Stop is cooperative: the running generator sees the flag, keeps the partial answers and ends
    # with the "Stopped" status itself. (Cancelling the event from the browser races with the
    # generator's last update, which could overwrite the "Stopped" message.)

    def request_stop(self, session: str | None = None) -> None:
        """Ask the generation of this browser session (None: a plain Python caller) to stop."""
        self._stop_flags.setdefault(session, threading.Event()).set()

    def _fresh_stop_flag(self, session: str | None) -> threading.Event:
        flag = self._stop_flags[session] = threading.Event()
        return flag

    @classmethod
    def from_dirs(cls, sft_dir, dpo_dir, *, device="auto", dtype="auto", **kwargs) -> Comparer:
        return cls(
            load_model(sft_dir, "SFT", device=device, dtype=dtype),
            load_model(dpo_dir, "DPO", device=device, dtype=dtype),
            **kwargs,
        )

    # -- shared pieces --------------------------------------------------------------------------

    def _prepare(self, prompt, system, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed):
        """-> (messages, settings, {role: prompt_ids}, None) or (None, None, None, message)."""
        if prompt is None or not str(prompt).strip():
            return None, None, None, "Type a prompt first (the prompt box is empty)."
        if seed is None or max_new_tokens is None:
            return None, None, None, "Fill in every generation setting (seed, max new tokens)."
        settings = GenSettings(
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature),
            top_p=float(top_p),
            top_k=int(top_k),
            repetition_penalty=float(repetition_penalty),
            seed=int(seed),
        )
        if problem := settings.problem():
            return None, None, None, problem
        messages = prompt_messages(str(prompt), system)
        ids = {lm.role: generation_prompt_ids(lm.tokenizer, messages) for lm in (self.sft, self.dpo)}
        n = max(len(v) for v in ids.values())
        if self.max_positions is not None and n + settings.max_new_tokens > self.max_positions:
            return None, None, None, (
                f"The prompt is too long: {n} tokens + {settings.max_new_tokens} new tokens exceeds the "
                f"models' context of {self.max_positions} positions. Shorten the prompt or lower max new tokens."
            )
        return messages, settings, ids, None

    def rewards(self, messages: list[dict], sft_text: str, dpo_text: str) -> tuple[float, float] | None:
        """Implicit DPO rewards (of the SFT answer, of the DPO answer), reference = SFT; None if unavailable."""
        if not self.shared_tokenizer:
            return None
        from minidpo.scoring import implicit_rewards

        r = implicit_rewards(self.dpo.model, self.sft.model, self.sft.tokenizer, messages, [sft_text, dpo_text], self.beta)
        return float(r[0]), float(r[1])

    def _stats(self, stream: Stream, reward: float | None = None, show_reward: bool = False) -> str:
        parts = [f"**{len(stream.tokens)} tokens**", f"{stream.tokens_per_s:.1f} tokens/s"]
        if stream.done:
            parts.append(f"stopped: {stream.stop_reason}")
        text = " · ".join(parts)
        if show_reward:
            text += f"  \nimplicit reward β·log(πDPO/πSFT) = **{_fmt_reward(reward)}** (β = {self.beta:g})"
        return text

    def _run_streams(self, messages, settings, ids) -> Iterator[tuple[Stream, Stream]]:
        sft = Stream(self.sft, ids["SFT"], settings)
        dpo = Stream(self.dpo, ids["DPO"], settings)
        while not (sft.done and dpo.done):
            sft.step()
            dpo.step()
            yield sft, dpo

    # -- side by side ---------------------------------------------------------------------------

    def compare(self, prompt, system, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed,
                session: str | None = None):
        """Stream both answers. Yields (sft_text, dpo_text, sft_stats, dpo_stats, status) tuples."""
        stop = self._fresh_stop_flag(session)
        messages, settings, ids, problem = self._prepare(
            prompt, system, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed
        )
        if problem:
            _warn(problem)
            yield "", "", "", "", f"**Cannot start:** {problem}"
            return
        sft = dpo = None
        try:
            for sft, dpo in self._run_streams(messages, settings, ids):
                if stop.is_set():
                    yield sft.text(), dpo.text(), self._stats(sft), self._stats(dpo), STOPPED
                    return
                status = f"Generating… SFT {len(sft.tokens)} tokens, DPO {len(dpo.tokens)} tokens"
                yield sft.text(), dpo.text(), self._stats(sft), self._stats(dpo), status
            yield sft.text(), dpo.text(), self._stats(sft), self._stats(dpo), "Scoring both answers…"
            rewards = self.rewards(messages, sft.text(), dpo.text())
        except Exception as exc:  # noqa: BLE001 - a message in the page, the trace in the console
            traceback.print_exc()
            message = f"Generation failed: {_first_line(exc)}"
            _warn(message)
            yield (sft.text() if sft else ""), (dpo.text() if dpo else ""), "", "", f"**Problem:** {message}"
            return
        r_sft, r_dpo = rewards if rewards else (None, None)
        if rewards is None:
            verdict = "Implicit rewards need both models to share one tokenizer; these two do not."
        else:
            margin = r_dpo - r_sft
            preferred = "DPO" if margin > 0 else "SFT" if margin < 0 else "neither"
            verdict = (
                f"The DPO model prefers the **{preferred}** answer by "
                f"{abs(margin):.3f} (reward margin DPO − SFT = {margin:+.3f}, β = {self.beta:g})."
            )
        yield (
            sft.text(),
            dpo.text(),
            self._stats(sft, r_sft, True),
            self._stats(dpo, r_dpo, True),
            f"**Done.** {verdict}",
        )

    # -- blind vote -----------------------------------------------------------------------------

    def blind(
        self, prompt, system, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, order_seed=None,
        session: str | None = None,
    ):
        """Stream both answers as A and B in a random order (drawn from `order_seed`, fresh if None).

        Yields (a_text, b_text, status, comparison) where `comparison` is None until both answers
        are finished, then a dict that `vote` turns into a JSONL line.
        """
        stop = self._fresh_stop_flag(session)
        messages, settings, ids, problem = self._prepare(
            prompt, system, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed
        )
        if problem:
            _warn(problem)
            yield "", "", f"**Cannot start:** {problem}", None
            return
        if order_seed is None:
            order_seed = secrets.randbelow(2**31)
        a_role, b_role = ("DPO", "SFT") if random.Random(order_seed).random() < 0.5 else ("SFT", "DPO")
        sft = dpo = None
        try:
            for sft, dpo in self._run_streams(messages, settings, ids):
                texts = {"SFT": sft.text(), "DPO": dpo.text()}
                if stop.is_set():
                    yield texts[a_role], texts[b_role], STOPPED, None
                    return
                n = len(sft.tokens) + len(dpo.tokens)
                yield texts[a_role], texts[b_role], f"Generating… {n} tokens so far", None
            texts = {"SFT": sft.text(), "DPO": dpo.text()}
            rewards = self.rewards(messages, texts["SFT"], texts["DPO"])
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            message = f"Generation failed: {_first_line(exc)}"
            _warn(message)
            yield "", "", f"**Problem:** {message}", None
            return
        comparison = {
            "prompt": str(prompt).strip(),
            "system": (system or "").strip(),
            "answers": {"A": texts[a_role], "B": texts[b_role]},
            "models": {"A": a_role, "B": b_role},
            "rewards": None if rewards is None else {"SFT": rewards[0], "DPO": rewards[1]},
            "settings": asdict(settings),
            "order_seed": order_seed,
            "voted": False,
        }
        yield texts[a_role], texts[b_role], "**Both answers are ready:** which one is better?", comparison

    def vote(self, comparison: dict | None, choice: str):
        """Record a vote ("A", "B" or "skip"). Returns (status markdown, updated comparison)."""
        if not comparison:
            message = "Generate a pair of answers first (or wait until both have finished)."
            _warn(message)
            return f"**Problem:** {message}", comparison
        if comparison.get("voted"):
            message = "This comparison is already recorded; generate a new one."
            _warn(message)
            return f"**Problem:** {message}", comparison
        models = comparison["models"]
        reveal = f"A was **{models['A']}**, B was **{models['B']}**."
        if comparison.get("rewards"):
            r = comparison["rewards"]
            reveal += f" Implicit rewards: SFT answer {_fmt_reward(r['SFT'])}, DPO answer {_fmt_reward(r['DPO'])}."
        if choice == "skip":
            comparison = {**comparison, "voted": True}
            return f"Skipped, nothing written. {reveal}", comparison
        if choice not in ("A", "B"):
            raise ValueError(f"unknown vote {choice!r}")
        loser = "B" if choice == "A" else "A"
        chosen, rejected = comparison["answers"][choice], comparison["answers"][loser]
        if not chosen.strip() or not rejected.strip():
            message = "One answer is empty, so this pair cannot become training data; skip it."
            _warn(message)
            return f"**Problem:** {message}", comparison
        if chosen.strip() == rejected.strip():
            message = "The two answers are identical, so there is nothing to learn from this pair; skip it."
            _warn(message)
            return f"**Problem:** {message}", comparison
        record = {"prompt": comparison["prompt"], "chosen": chosen, "rejected": rejected}
        if comparison["system"]:
            record["system"] = comparison["system"]
        record["meta"] = {
            "winner": models[choice].lower(),
            "loser": models[loser].lower(),
            "vote": choice,
            "shown_as": {"A": models["A"].lower(), "B": models["B"].lower()},
            "order_seed": comparison["order_seed"],
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": comparison["settings"],
            "models": {"sft": self.sft.path, "dpo": self.dpo.path},
            "beta": self.beta,
            "implicit_rewards": (
                {k.lower(): v for k, v in comparison["rewards"].items()} if comparison.get("rewards") else None
            ),
        }
        try:
            with self._vote_lock:
                self.votes_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.votes_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as exc:
            message = f"Could not write the vote to {self.votes_path}: {_first_line(exc)}"
            _warn(message)
            return f"**Problem:** {message}", comparison
        comparison = {**comparison, "voted": True}
        return f"**Vote saved** to `{self.votes_path}`: {choice} is better. {reveal}", comparison


# ---------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------

CSS = """
.answer textarea { font-size: 15px; line-height: 1.5; }
#title { margin-bottom: 0; }
"""


def build_app(comparer: Comparer, *, default_max_new_tokens: int = 256):
    """The Gradio Blocks page for `comparer`. Launch it with `launch_kwargs()` (theme and css go there)."""
    import gradio as gr

    from app.examples import EXAMPLES

    limit = comparer.max_positions - 1 if comparer.max_positions else 4096
    max_tokens_cap = max(1, min(4096, limit))
    settings_defaults = GenSettings(max_new_tokens=min(default_max_new_tokens, max_tokens_cap))

    with gr.Blocks(title="minidpo: SFT vs DPO", analytics_enabled=False) as demo:
        gr.Markdown("# SFT vs DPO", elem_id="title")
        gr.Markdown(
            f"**SFT** `{comparer.sft.path}` · **DPO** `{comparer.dpo.path}` · β = {comparer.beta:g} · "
            "the implicit reward β·log(πDPO(answer)/πSFT(answer)) says which answer DPO prefers."
        )
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Ask something…", elem_id="prompt")
                system = gr.Textbox(label="System prompt (optional)", lines=1, elem_id="system")
                gr.Examples(EXAMPLES, inputs=[prompt, system], label="Examples (Chinese and English)")
            with gr.Column(scale=2), gr.Accordion("Generation settings", open=True):
                max_new_tokens = gr.Slider(
                    1, max_tokens_cap, value=settings_defaults.max_new_tokens, step=1, label="Max new tokens",
                    elem_id="max-new-tokens",
                )
                temperature = gr.Slider(0.0, 2.0, value=settings_defaults.temperature, step=0.05,
                                        label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1.0, value=settings_defaults.top_p, step=0.01, label="Top-p")
                top_k = gr.Slider(0, 200, value=settings_defaults.top_k, step=1, label="Top-k (0 = off)")
                repetition_penalty = gr.Slider(
                    0.5, 2.0, value=settings_defaults.repetition_penalty, step=0.05, label="Repetition penalty"
                )
                seed = gr.Number(value=settings_defaults.seed, precision=0, label="Seed", elem_id="seed")
        inputs = [prompt, system, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed]

        with gr.Tabs():
            with gr.Tab("Side by side", id="compare"):
                with gr.Row():
                    compare_btn = gr.Button("Compare", variant="primary", scale=4, elem_id="compare-btn")
                    stop_btn = gr.Button("Stop", variant="stop", scale=1, elem_id="stop-btn")
                status = gr.Markdown(elem_id="status")
                with gr.Row(equal_height=True):
                    with gr.Column():
                        sft_out = gr.Textbox(label=f"SFT · {comparer.sft.path}", lines=12, max_lines=30,
                                             interactive=False, elem_id="sft-answer", elem_classes="answer")
                        sft_stats = gr.Markdown(elem_id="sft-stats")
                    with gr.Column():
                        dpo_out = gr.Textbox(label=f"DPO · {comparer.dpo.path}", lines=12, max_lines=30,
                                             interactive=False, elem_id="dpo-answer", elem_classes="answer")
                        dpo_stats = gr.Markdown(elem_id="dpo-stats")

            with gr.Tab("Blind vote", id="blind"):
                gr.Markdown(
                    "Both models answer the prompt above, shown as **A** and **B** in a random order. "
                    f"Your vote is appended to `{comparer.votes_path}` as a preference pair "
                    "(`prompt` / `chosen` / `rejected`), ready for the next round of DPO."
                )
                with gr.Row():
                    blind_btn = gr.Button("Generate A / B", variant="primary", scale=4, elem_id="blind-btn")
                    blind_stop = gr.Button("Stop", variant="stop", scale=1, elem_id="blind-stop-btn")
                blind_status = gr.Markdown(elem_id="blind-status")
                with gr.Row(equal_height=True):
                    a_out = gr.Textbox(label="A", lines=12, max_lines=30, interactive=False,
                                       elem_id="a-answer", elem_classes="answer")
                    b_out = gr.Textbox(label="B", lines=12, max_lines=30, interactive=False,
                                       elem_id="b-answer", elem_classes="answer")
                with gr.Row():
                    vote_a = gr.Button("A is better", elem_id="vote-a")
                    vote_tie = gr.Button("Tie / skip", elem_id="vote-skip")
                    vote_b = gr.Button("B is better", elem_id="vote-b")
                vote_status = gr.Markdown(elem_id="vote-status")
                comparison = gr.State(None)

        # Gradio passes the browser session to a parameter annotated gr.Request (a class, not the string
        # that `from __future__ import annotations` leaves); Stop uses it to reach that session only.
        def compare_in_session(prompt, system, max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                               seed, request):
            yield from comparer.compare(prompt, system, max_new_tokens, temperature, top_p, top_k,
                                        repetition_penalty, seed, session=request.session_hash)

        def blind_in_session(prompt, system, max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                             seed, request):
            yield from comparer.blind(prompt, system, max_new_tokens, temperature, top_p, top_k,
                                      repetition_penalty, seed, session=request.session_hash)

        def stop_session(request):
            comparer.request_stop(request.session_hash)
            gr.Warning("Generation stopped; the partial answers stay, no rewards were computed.")

        for handler in (compare_in_session, blind_in_session, stop_session):
            handler.__annotations__ = {"request": gr.Request}

        for trigger in (compare_btn.click, prompt.submit):
            trigger(compare_in_session, inputs, [sft_out, dpo_out, sft_stats, dpo_stats, status],
                    concurrency_id="generate", concurrency_limit=1, show_progress="hidden")
        stop_btn.click(stop_session, None, None, queue=False)

        blind_btn.click(
            lambda *args: (None, ""), None, [comparison, vote_status], queue=False
        ).then(
            blind_in_session, inputs, [a_out, b_out, blind_status, comparison],
            concurrency_id="generate", concurrency_limit=1, show_progress="hidden",
        )
        blind_stop.click(stop_session, None, None, queue=False)
        vote_a.click(lambda c: comparer.vote(c, "A"), comparison, [vote_status, comparison])
        vote_b.click(lambda c: comparer.vote(c, "B"), comparison, [vote_status, comparison])
        vote_tie.click(lambda c: comparer.vote(c, "skip"), comparison, [vote_status, comparison])
    return demo


def launch_kwargs(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> dict:
    """Keyword arguments for `demo.launch` (Gradio 6 takes theme and css here, not in Blocks)."""
    import gradio as gr

    return dict(
        server_name=host,
        server_port=port,
        theme=gr.themes.Default(),  # fonts served locally (no Google Fonts)
        css=CSS,
        footer_links=["gradio", "settings"],
        show_error=False,
        ssr_mode=False,
    )


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m app.compare",
        description="Compare an SFT and a DPO model side by side in a local Gradio page.",
    )
    p.add_argument("--sft", metavar="DIR", help="SFT (reference) model folder or .gguf file [default: <runs-dir>/sft/export]")
    p.add_argument("--dpo", metavar="DIR", help="DPO model folder or .gguf file [default: newest <runs-dir>/dpo*/export*]")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help="where the defaults are looked for [%(default)s]")
    p.add_argument("--beta", type=float, default=DEFAULT_BETA, help="β of the implicit reward [%(default)s]")
    p.add_argument("--votes", default=DEFAULT_VOTES, metavar="PATH", help="blind-vote JSONL file [%(default)s]")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="interface to serve on [%(default)s]; 0.0.0.0 exposes the app to your network")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="[%(default)s]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, … [%(default)s]")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto = bf16/fp16 on GPU, fp32 on CPU [%(default)s]")
    p.add_argument("--max-new-tokens", type=int, default=256, help="initial slider value [%(default)s]")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        sft_dir, dpo_dir = resolve_model_dirs(args.sft, args.dpo, args.runs_dir)
        check_model_dir(sft_dir, "SFT")
        check_model_dir(dpo_dir, "DPO")
        comparer = Comparer.from_dirs(
            sft_dir, dpo_dir, device=args.device, dtype=args.dtype, beta=args.beta, votes_path=args.votes
        )
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not comparer.shared_tokenizer:
        print("warning: the two models have different tokenizers; implicit rewards are disabled", file=sys.stderr)
    demo = build_app(comparer, default_max_new_tokens=args.max_new_tokens)
    print(f"SFT {sft_dir}  vs  DPO {dpo_dir}  (β = {args.beta:g}, votes -> {args.votes})")
    demo.queue().launch(**launch_kwargs(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
