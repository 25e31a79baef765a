"""The arena: two anonymous answers from a random pair of the pool, a vote (A / B / tie / both bad), the
names revealed after it; regenerate; the conversation goes on with both models, a vote per turn.

A comparison is a plain dict (the page keeps it in a gr.State): prompt, system, history (the earlier turns,
shared by both models: after each vote the conversation continues with the preferred answer, A's on a
tie), answers / models / tokens as "A" and "B", rewards (implicit rewards, only when the pair is the side
by side's SFT-vs-DPO pair), settings, order_seed (draws the pair and its order), battle, turn, voted.
"""

from __future__ import annotations

import random
import secrets
import traceback
from dataclasses import asdict

from app.votes import OUTCOMES, VoteRefused
from minidpo.errors import first_line

STOPPED = "**Stopped:** partial answers kept, no rewards computed."
CHOICES = (*OUTCOMES, "skip")


def _warn(message: str) -> None:
    import gradio as gr  # the page's toast; a Python warning in a plain call

    gr.Warning(message)


def _problem(message: str) -> str:
    _warn(message)
    return f"**Problem:** {message}"


def _fmt(r: float) -> str:
    return f"{r:+.3f}"


class Arena:
    """The arena's handlers over a `Comparer` (its pool, votes and stop flags)."""

    def __init__(self, comparer):
        self.c = comparer

    def draw(self, order_seed: int) -> tuple[str, str]:
        """The pair shown as (A, B) for `order_seed`: two different models of the pool, in a random order."""
        return tuple(random.Random(order_seed).sample(self.c.pool.names, 2))

    def battle(self, prompt, system, *settings_values, order_seed=None, session: str | None = None,
               previous: dict | None = None, regenerate: bool = False, history=()):
        """Stream two anonymous answers. Yields (a_text, b_text, status, comparison); comparison is None
        until both answers are finished. `previous` (a voted comparison) continues its conversation with
        `prompt` as the next user turn; with `regenerate`, the same turn is answered again (next seed)."""
        stop = self.c._fresh_stop_flag(session)
        turn, battle = 0, secrets.token_hex(6)
        if regenerate and not previous:
            yield "", "", _problem("Generate a pair of answers first; Regenerate answers its turn again."), None
            return
        if previous is not None:
            if regenerate:
                prompt, system, history = previous["prompt"], previous["system"], previous.get("history", [])
                s = previous["settings"]
                settings_values = (s["max_new_tokens"], s["temperature"], s["top_p"], s["top_k"],
                                   s["repetition_penalty"], s["seed"] + 1)
                turn = previous.get("turn", 0)
            elif not previous.get("voted"):
                message = _problem("Vote on this turn first (or skip it), then continue the conversation.")
                yield previous["answers"]["A"], previous["answers"]["B"], message, previous
                return
            else:
                history = [*previous.get("history", []), {"role": "user", "content": previous["prompt"]},
                           {"role": "assistant", "content": previous["kept"]}]
                turn = previous.get("turn", 0) + 1
            order_seed, battle = previous["order_seed"], previous.get("battle", battle)
        if order_seed is None:
            order_seed = secrets.randbelow(2**31)
        if previous is not None:
            a_name, b_name = previous["models"]["A"], previous["models"]["B"]
        else:
            a_name, b_name = self.draw(order_seed)
        try:
            pair = self.c.session_for(a_name, b_name)
        except Exception as exc:  # noqa: BLE001 - a model that fails to load: a message in the page
            yield "", "", _problem(f"Could not load a model: {first_line(exc)}"), None
            return
        request, problem = self.c._start(pair, prompt, system, settings_values, history)
        if problem:
            yield "", "", f"**Cannot start:** {problem}", None
            return
        texts, tokens = {}, {}
        try:
            for a, b in pair.run(request):
                texts, tokens = {"A": a.text(), "B": b.text()}, {"A": len(a.tokens), "B": len(b.tokens)}
                if stop.is_set():
                    yield texts["A"], texts["B"], STOPPED, None
                    return
                yield texts["A"], texts["B"], f"Generating… {tokens['A'] + tokens['B']} tokens so far", None
            rewards = self._rewards(request.messages, {a_name: texts["A"], b_name: texts["B"]})
        except Exception as exc:  # noqa: BLE001 - a message in the page, the trace in the console
            traceback.print_exc()
            yield "", "", _problem(f"Generation failed: {first_line(exc)}"), None
            return
        comparison = {
            "prompt": str(prompt).strip(), "system": (system or "").strip(), "history": list(history),
            "answers": texts, "models": {"A": a_name, "B": b_name}, "tokens": tokens, "rewards": rewards,
            "settings": asdict(request.settings), "order_seed": order_seed, "battle": battle, "turn": turn,
            "voted": False,
        }
        notes = [f"turn {turn + 1} of the conversation"] * bool(turn) + ["answered again"] * regenerate
        where = f" ({'; '.join(notes)})" if notes else ""
        yield texts["A"], texts["B"], f"**Both answers are ready{where}:** which one is better?", comparison

    def _rewards(self, messages, texts: dict) -> dict | None:
        """Implicit rewards of both answers when the pair is the side by side's (reference, policy)."""
        left, right = self.c.pair
        if set(texts) != {left, right} or left == right:
            return None
        r = self.c.session_for(left, right).rewards(messages, texts[left], texts[right])
        return None if r is None else {left: r[0], right: r[1]}

    def vote(self, comparison: dict | None, choice: str, *, judge: str = "person"):
        """Record a vote: "A" / "B" (a training pair), "tie" (the leaderboard only), "both_bad" (two unpaired
        examples labelled false), "skip" (nothing). Returns (status markdown, updated comparison)."""
        if choice not in CHOICES:
            raise ValueError(f"unknown vote {choice!r}: one of {', '.join(CHOICES)}")
        if not comparison:
            return _problem("Generate a pair of answers first (or wait until both have finished)."), comparison
        if comparison.get("voted"):
            return _problem("This comparison is already recorded; generate a new one."), comparison
        models = comparison["models"]
        reveal = f"A was **{models['A']}**, B was **{models['B']}**."
        if comparison.get("rewards"):
            reveal += " Implicit rewards: " + ", ".join(
                f"{name} answer {_fmt(r)}" for name, r in comparison["rewards"].items()) + "."
        kept = comparison["answers"]["B" if choice == "B" else "A"]
        done = {**comparison, "voted": True, "kept": kept}
        if choice == "skip":
            return f"Skipped, nothing written. {reveal}", done
        sources = {name.lower(): self.c.pool.sources[name] for name in models.values()}
        try:
            if choice in ("A", "B"):
                records = [self.c.votes.record(comparison, choice, models=sources, beta=self.c.beta)]
                what = f"{choice} is better"
            elif choice == "both_bad":
                records = [self.c.votes.unpaired(comparison, side, False, vote="both_bad", models=sources)
                           for side in ("A", "B")]
                what = "both are bad (two unpaired examples, label false)"
            else:
                records, what = [], "a tie (counted on the leaderboard, no training pair)"
            self.c.votes.append(*records, battle=self.c.votes.battle(comparison, choice, judge=judge))
        except VoteRefused as exc:
            return _problem(str(exc)), comparison
        return f"**Vote saved** to `{self.c.votes_path}`: {what}. {reveal}", done
