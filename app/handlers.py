"""The page's event handlers: thin functions over `Session` (the answers as data), the pool of models,
the arena (`app.battle`) and `VoteWriter`.

Each handler takes the prompt, the system prompt and the six sampling settings as the page sends them,
and yields the page's strings; all of them can be called from a test without a browser.
"""

from __future__ import annotations

import html
import threading
import traceback
from dataclasses import asdict

from app.battle import Arena
from app.leaderboard import leaderboard, read_battles
from app.pool import Pool
from app.session import Answer, CannotStart, Session, settings_from
from app.views import heatmap_html, leaderboard_html, rendered_answer, token_html
from app.votes import DEFAULT_VOTES, VoteRefused, VoteWriter
from minidpo.errors import DataError, first_line
from minidpo.models import LoadedModel, load_model, resolve_beta

STOPPED = "**Stopped:** partial answers kept, no rewards computed."


def _warn(message: str) -> None:
    """A toast in the page when called from a Gradio event; a Python warning in a plain call."""
    import gradio as gr

    gr.Warning(message)


def with_rendered(updates):
    """The updates of a two-answer handler (its two texts first), each followed by the two answers' rendered
    views (`rendered_answer`): empty while the answers stream, then once more the last update, rendered
    (the answers as they ended: done, stopped or failed), so a view is built once per answer, not per token."""
    last = None
    for last in updates:
        yield (*last, "", "")
    if last is not None:
        yield (*last, rendered_answer(last[0]), rendered_answer(last[1]))


def _fmt_reward(r: float | None) -> str:
    return "n/a" if r is None else f"{r:+.3f}"


class Comparer:
    """The app's handlers over a pool of models. The side by side shows any two of the pool (`pair`:
    left = the reference of the implicit rewards, right = the policy; default SFT vs DPO); the arena
    (`self.arena`) draws pairs from the whole pool; `votes_path` is where votes go."""

    def __init__(self, sft: LoadedModel | None = None, dpo: LoadedModel | None = None, *, pool: Pool | None = None,
                 pair: tuple[str, str] | None = None, beta: float | None = None, beta_source: str | None = None,
                 votes_path=DEFAULT_VOTES):
        if pool is None:  # two loaded models: a pool of exactly them, named by their roles
            pool = Pool({sft.role: sft.path, dpo.role: dpo.path}, loaded={sft.role: sft, dpo.role: dpo})
            pair = (sft.role, dpo.role)
        self.pool = pool
        self.pair = tuple(pair or pool.names[:2])
        self._beta_flag = None if beta is None else (float(beta), beta_source or "--beta")
        self.votes = VoteWriter(votes_path)
        self._stop_flags: dict[str | None, threading.Event] = {}
        self._finished: dict[str | None, dict] = {}  # per browser session: the last side-by-side answers
        self.arena = Arena(self)

    @classmethod
    def from_dirs(cls, sft_dir, dpo_dir, *, device="auto", dtype="auto", tokenizer=None, beta=None,
                  allow_pickle=False, **kwargs):
        """Load both models; beta from the DPO run's run_config.json unless given."""
        load = dict(tokenizer=tokenizer, device=device, dtype=dtype, allow_pickle=allow_pickle)
        return cls(load_model(sft_dir, "SFT", **load), load_model(dpo_dir, "DPO", **load), beta=beta, **kwargs)

    def beta_for(self, right: str) -> tuple[float, str]:
        """β of the implicit rewards with `right` as the policy: --beta, else its run's run_config.json."""
        return self._beta_flag or resolve_beta(None, self.pool.sources[right])

    def session_for(self, left: str | None = None, right: str | None = None) -> Session:
        """A Session of two pool models (loaded now if needed; default: the side by side's pair)."""
        left, right = left or self.pair[0], right or self.pair[1]
        beta, source = self.beta_for(right)
        return Session(self.pool.get(left, keep=(right,)), self.pool.get(right, keep=(left,)), beta=beta,
                       beta_source=source, shared_tokenizer=self.pool.shared_tokenizer(left, right))

    # what the page and the tests read
    session = property(lambda self: self.session_for())
    sft = property(lambda self: self.pool.get(self.pair[0], keep=self.pair))
    dpo = property(lambda self: self.pool.get(self.pair[1], keep=self.pair))
    beta = property(lambda self: self.beta_for(self.pair[1])[0])
    beta_source = property(lambda self: self.beta_for(self.pair[1])[1])
    shared_tokenizer = property(lambda self: self.pool.shared_tokenizer(*self.pair))
    max_positions = property(lambda self: self.session.max_positions)
    votes_path = property(lambda self: self.votes.path)

    def vote(self, comparison: dict | None, choice: str):
        """Record an arena / blind vote ("A", "B", "tie", "both_bad" or "skip"); see `Arena.vote`."""
        return self.arena.vote(comparison, choice)

    def blind(self, *args, **kwargs):
        """Stream an anonymous pair of answers; see `Arena.battle`."""
        yield from self.arena.battle(*args, **kwargs)

    def compare_views(self, *args, **kwargs):
        """`compare`'s updates, each followed by the two rendered views (`with_rendered`): what the page shows."""
        yield from with_rendered(self.compare(*args, **kwargs))

    def blind_views(self, *args, **kwargs):
        """`blind`'s updates, each followed by the two rendered views (`with_rendered`): what the page shows."""
        yield from with_rendered(self.blind(*args, **kwargs))

    # -- stopping -------------------------------------------------------------------------------
    # Stop is cooperative: the running generator sees the flag, keeps the partial answers and ends
    # with the "Stopped" status itself (cancelling from the browser races with its last update).

    def request_stop(self, session: str | None = None) -> None:
        """Ask the generation of this browser session (None: a plain Python caller) to stop."""
        self._stop_flags.setdefault(session, threading.Event()).set()

    def _fresh_stop_flag(self, session: str | None) -> threading.Event:
        flag = self._stop_flags[session] = threading.Event()
        return flag

    def _start(self, session: Session, prompt, system, settings_values, history=()):
        """-> (Request, None) or (None, message for people)."""
        try:
            return session.prepare(prompt, system, settings_from(*settings_values), history), None
        except CannotStart as exc:
            _warn(str(exc))
            return None, str(exc)

    def _stats(self, a: Answer, reward: float | None = None, show_reward: bool = False, *, policy: str = "DPO",
               reference: str = "SFT", beta: float | None = None) -> str:
        parts = [f"**{a.n_tokens} tokens**", f"{a.tokens_per_s:.1f} tokens/s"]
        if a.done:
            parts.append(f"stopped: {a.stop_reason}")
        text = " · ".join(parts)
        if show_reward:
            text += (f"  \nimplicit reward β·log(π{policy}/π{reference}) = **{_fmt_reward(reward)}** "
                     f"(β = {self.beta if beta is None else beta:g})")
        return text

    # -- side by side ---------------------------------------------------------------------------

    def compare(self, prompt, system, *settings_values, session: str | None = None, left: str | None = None,
                right: str | None = None, colour: bool = False):
        """Stream two answers of the pool (default: the side by side's pair). Yields (left_text, right_text,
        left_stats, right_stats, status) tuples. settings_values: max_new_tokens, temperature, top_p, top_k,
        repetition_penalty, seed. colour: score per token (`token_colours` shows it), the rewards being the
        tokens' sums; one scoring pass per answer either way."""
        stop = self._fresh_stop_flag(session)
        self._finished.pop(session, None)
        left, right = left or self.pair[0], right or self.pair[1]
        try:
            pair = self.session_for(left, right)
        except Exception as exc:  # noqa: BLE001 - a model that fails to load: a message in the page
            message = f"Could not load the model: {first_line(exc)}"
            _warn(message)
            yield "", "", "", "", f"**Problem:** {message}"
            return
        request, problem = self._start(pair, prompt, system, settings_values)
        if problem:
            yield "", "", "", "", f"**Cannot start:** {problem}"
            return
        a = b = None
        shares = None
        try:
            for sft, dpo in pair.run(request):
                a, b = sft.answer(), dpo.answer()
                if stop.is_set():
                    yield a.text, b.text, self._stats(a), self._stats(b), STOPPED
                    return
                status = f"Generating… {left} {a.n_tokens} tokens, {right} {b.n_tokens} tokens"
                yield a.text, b.text, self._stats(a), self._stats(b), status
            yield a.text, b.text, self._stats(a), self._stats(b), "Scoring both answers…"
            if colour:
                shares = pair.token_shares(request.messages, [a.text, b.text])
                rewards = None if shares is None else tuple(sum(x[1]) for x in shares)
            else:
                rewards = pair.rewards(request.messages, a.text, b.text)
        except Exception as exc:  # noqa: BLE001 - a message in the page, the trace in the console
            traceback.print_exc()
            message = f"Generation failed: {first_line(exc)}"
            _warn(message)
            yield (a.text if a else ""), (b.text if b else ""), "", "", f"**Problem:** {message}"
            return
        self._finished[session] = {
            "prompt": str(prompt).strip(), "system": (system or "").strip(), "answers": {"A": a.text, "B": b.text},
            "models": {"A": left, "B": right}, "settings": asdict(request.settings), "shares": shares,
            "thumbs": set()}
        r_left, r_right = rewards if rewards else (None, None)
        if rewards is None:
            verdict = "Implicit rewards need both models to share one tokenizer; these two do not."
        else:
            margin = r_right - r_left
            preferred = right if margin > 0 else left if margin < 0 else "neither"
            verdict = (f"The {right} model prefers the **{preferred}** answer by {abs(margin):.3f} "
                       f"(reward margin {right} − {left} = {margin:+.3f}, β = {pair.beta:g}).")
        names = dict(policy=right, reference=left, beta=pair.beta)
        yield (a.text, b.text, self._stats(a, r_left, True, **names), self._stats(b, r_right, True, **names),
               f"**Done.** {verdict}")

    def token_colours(self, session: str | None = None) -> tuple[str, str]:
        """HTML of the last side-by-side answers, each token coloured by its share of the implicit reward
        (empty when that comparison was not scored per token)."""
        shares = (self._finished.get(session) or {}).get("shares")
        if not shares:
            return "", ""
        return token_html(*shares[0]), token_html(*shares[1])

    def thumb(self, side: str, up: bool, session: str | None = None) -> str:
        """A thumbs up / down on the left ("A") or right ("B") answer of the last side by side: an unpaired
        example in the votes file. Returns the status line."""
        finished = self._finished.get(session)
        if not finished:
            message = "Compare first (or wait until both answers have finished)."
            _warn(message)
            return f"**Problem:** {message}"
        if side in finished["thumbs"]:
            message = "This answer already has your thumb; compare again for a new one."
            _warn(message)
            return f"**Problem:** {message}"
        try:
            record = self.votes.unpaired(finished, side, up, vote="thumbs_up" if up else "thumbs_down",
                                         models={k: self.pool.sources[v] for k, v in finished["models"].items()})
            self.votes.append(record)
        except VoteRefused as exc:
            _warn(str(exc))
            return f"**Problem:** {exc}"
        finished["thumbs"].add(side)
        return (f"**Thumbs {'up' if up else 'down'} saved** to `{self.votes_path}` for the "
                f"{finished['models'][side]} answer (an unpaired example, label {str(up).lower()}).")

    # -- leaderboard ----------------------------------------------------------------------------

    def board(self, style: bool = False, rounds: int = 200) -> tuple[str, str]:
        """(ranking table, win-rate heatmap) as HTML, fitted on every battle in the battles file."""
        try:
            battles = read_battles(self.votes.battles_path)
        except DataError as exc:
            return f"<p><b>Problem:</b> {html.escape(str(exc))}</p>", ""
        board = leaderboard(battles, self.pool.names, rounds=rounds, style=bool(style))
        return leaderboard_html(board), heatmap_html(board)
