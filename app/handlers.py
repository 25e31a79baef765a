"""The page's event handlers: thin functions over `Session` (the answers as data) and `VoteWriter`.

Each handler takes the prompt, the system prompt and the six sampling settings as the page sends them,
and yields the page's strings; all of them can be called from a test without a browser.
"""

from __future__ import annotations

import random
import secrets
import threading
import traceback
from dataclasses import asdict

from app.session import Answer, CannotStart, Session, settings_from
from app.votes import DEFAULT_VOTES, VoteRefused, VoteWriter
from minidpo.errors import first_line
from minidpo.models import LoadedModel, load_model, resolve_beta

STOPPED = "**Stopped:** partial answers kept, no rewards computed."


def _warn(message: str) -> None:
    """A toast in the page when called from a Gradio event; a Python warning in a plain call."""
    import gradio as gr

    gr.Warning(message)


def _fmt_reward(r: float | None) -> str:
    return "n/a" if r is None else f"{r:+.3f}"


class Comparer:
    """The app's handlers over a `Session` of two models; `votes_path` is where blind votes go."""

    def __init__(self, sft: LoadedModel, dpo: LoadedModel, *, beta: float | None = None, beta_source: str | None = None,
                 votes_path=DEFAULT_VOTES):
        if beta is None:
            beta, beta_source = resolve_beta(None, dpo.path)
        self.session = Session(sft, dpo, beta=beta, beta_source=beta_source or "--beta")
        self.votes = VoteWriter(votes_path)
        self._stop_flags: dict[str | None, threading.Event] = {}

    @classmethod
    def from_dirs(cls, sft_dir, dpo_dir, *, device="auto", dtype="auto", tokenizer=None, beta=None,
                  allow_pickle=False, **kwargs):
        """Load both models; beta from the DPO run's run_config.json unless given."""
        beta, source = resolve_beta(beta, dpo_dir)
        load = dict(tokenizer=tokenizer, device=device, dtype=dtype, allow_pickle=allow_pickle)
        return cls(load_model(sft_dir, "SFT", **load), load_model(dpo_dir, "DPO", **load),
                   beta=beta, beta_source=source, **kwargs)

    # what the page and the tests read
    sft = property(lambda self: self.session.sft)
    dpo = property(lambda self: self.session.dpo)
    beta = property(lambda self: self.session.beta)
    beta_source = property(lambda self: self.session.beta_source)
    shared_tokenizer = property(lambda self: self.session.shared_tokenizer)
    max_positions = property(lambda self: self.session.max_positions)
    votes_path = property(lambda self: self.votes.path)

    # -- stopping -------------------------------------------------------------------------------
    # Stop is cooperative: the running generator sees the flag, keeps the partial answers and ends
    # with the "Stopped" status itself (cancelling from the browser races with its last update).

    def request_stop(self, session: str | None = None) -> None:
        """Ask the generation of this browser session (None: a plain Python caller) to stop."""
        self._stop_flags.setdefault(session, threading.Event()).set()

    def _fresh_stop_flag(self, session: str | None) -> threading.Event:
        flag = self._stop_flags[session] = threading.Event()
        return flag

    def _start(self, prompt, system, settings_values):
        """-> (Request, None) or (None, message for people)."""
        try:
            return self.session.prepare(prompt, system, settings_from(*settings_values)), None
        except CannotStart as exc:
            _warn(str(exc))
            return None, str(exc)

    def _stats(self, a: Answer, reward: float | None = None, show_reward: bool = False) -> str:
        parts = [f"**{a.n_tokens} tokens**", f"{a.tokens_per_s:.1f} tokens/s"]
        if a.done:
            parts.append(f"stopped: {a.stop_reason}")
        text = " · ".join(parts)
        if show_reward:
            text += f"  \nimplicit reward β·log(πDPO/πSFT) = **{_fmt_reward(reward)}** (β = {self.beta:g})"
        return text

    # -- side by side ---------------------------------------------------------------------------

    def compare(self, prompt, system, *settings_values, session: str | None = None):
        """Stream both answers. Yields (sft_text, dpo_text, sft_stats, dpo_stats, status) tuples.
        settings_values: max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed."""
        stop = self._fresh_stop_flag(session)
        request, problem = self._start(prompt, system, settings_values)
        if problem:
            yield "", "", "", "", f"**Cannot start:** {problem}"
            return
        a = b = None
        try:
            for sft, dpo in self.session.run(request):
                a, b = sft.answer(), dpo.answer()
                if stop.is_set():
                    yield a.text, b.text, self._stats(a), self._stats(b), STOPPED
                    return
                status = f"Generating… SFT {a.n_tokens} tokens, DPO {b.n_tokens} tokens"
                yield a.text, b.text, self._stats(a), self._stats(b), status
            yield a.text, b.text, self._stats(a), self._stats(b), "Scoring both answers…"
            rewards = self.session.rewards(request.messages, a.text, b.text)
        except Exception as exc:  # noqa: BLE001 - a message in the page, the trace in the console
            traceback.print_exc()
            message = f"Generation failed: {first_line(exc)}"
            _warn(message)
            yield (a.text if a else ""), (b.text if b else ""), "", "", f"**Problem:** {message}"
            return
        r_sft, r_dpo = rewards if rewards else (None, None)
        if rewards is None:
            verdict = "Implicit rewards need both models to share one tokenizer; these two do not."
        else:
            margin = r_dpo - r_sft
            preferred = "DPO" if margin > 0 else "SFT" if margin < 0 else "neither"
            verdict = (f"The DPO model prefers the **{preferred}** answer by {abs(margin):.3f} "
                       f"(reward margin DPO − SFT = {margin:+.3f}, β = {self.beta:g}).")
        yield a.text, b.text, self._stats(a, r_sft, True), self._stats(b, r_dpo, True), f"**Done.** {verdict}"

    # -- blind vote -----------------------------------------------------------------------------

    def blind(self, prompt, system, *settings_values, order_seed=None, session: str | None = None):
        """Stream both answers as A and B in a random order (drawn from `order_seed`, fresh if None).

        Yields (a_text, b_text, status, comparison) where `comparison` is None until both answers
        are finished, then a dict that `vote` turns into a JSONL line.
        """
        stop = self._fresh_stop_flag(session)
        request, problem = self._start(prompt, system, settings_values)
        if problem:
            yield "", "", f"**Cannot start:** {problem}", None
            return
        if order_seed is None:
            order_seed = secrets.randbelow(2**31)
        a_role, b_role = ("DPO", "SFT") if random.Random(order_seed).random() < 0.5 else ("SFT", "DPO")
        texts = {}
        try:
            for sft, dpo in self.session.run(request):
                texts = {"SFT": sft.text(), "DPO": dpo.text()}
                if stop.is_set():
                    yield texts[a_role], texts[b_role], STOPPED, None
                    return
                n = len(sft.tokens) + len(dpo.tokens)
                yield texts[a_role], texts[b_role], f"Generating… {n} tokens so far", None
            rewards = self.session.rewards(request.messages, texts["SFT"], texts["DPO"])
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            message = f"Generation failed: {first_line(exc)}"
            _warn(message)
            yield "", "", f"**Problem:** {message}", None
            return
        comparison = {
            "prompt": str(prompt).strip(),
            "system": (system or "").strip(),
            "answers": {"A": texts[a_role], "B": texts[b_role]},
            "models": {"A": a_role, "B": b_role},
            "rewards": None if rewards is None else {"SFT": rewards[0], "DPO": rewards[1]},
            "settings": asdict(request.settings),
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
            return f"Skipped, nothing written. {reveal}", {**comparison, "voted": True}
        try:
            record = self.votes.record(comparison, choice, models={"sft": self.sft.path, "dpo": self.dpo.path},
                                       beta=self.beta)
            self.votes.append(record)
        except VoteRefused as exc:
            _warn(str(exc))
            return f"**Problem:** {exc}", comparison
        return (f"**Vote saved** to `{self.votes_path}`: {choice} is better. {reveal}",
                {**comparison, "voted": True})
