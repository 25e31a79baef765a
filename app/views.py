"""HTML fragments the page shows: tokens coloured by their share of the implicit reward, the leaderboard
table and its win-rate heatmap, an answer's thinking and tool calls rendered. Plain strings with inline styles
(no script, nothing fetched)."""

from __future__ import annotations

import html

from app.leaderboard import Board
from minidpo.data.display import answer_markdown, answer_parts

GREEN, RED = (22, 163, 74), (220, 38, 38)  # DPO pushed this token up / down


def _tint(rgb: tuple[int, int, int], strength: float) -> str:
    """rgba background, strength in [0, 1]."""
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{0.08 + 0.72 * min(1.0, max(0.0, strength)):.2f})"


def rendered_answer(text: str) -> str:
    """Markdown of an answer with thinking folded and tool calls as JSON (`answer_markdown`), or "" when it
    has neither: a plain answer is read in its text box."""
    if all(kind == "text" for kind, _ in answer_parts(text or "")):
        return ""
    return answer_markdown(text)


def token_html(pieces: list[str], shares: list[float]) -> str:
    """Each token as a span: green where β·(log πDPO − log πSFT) > 0, red where < 0, the stronger the larger
    |share| relative to the answer's largest; the exact share in the title (hover). The total is the
    answer's implicit reward."""
    scale = max((abs(x) for x in shares), default=0.0) or 1.0
    spans = []
    for piece, share in zip(pieces, shares):
        colour = _tint(GREEN if share > 0 else RED, abs(share) / scale)
        text = html.escape(piece).replace("\n", "↵<br>")
        spans.append(f'<span class="tok" style="background:{colour}" title="{share:+.4f}">{text}</span>')
    total = sum(shares)
    return (f'<div class="tokens">{"".join(spans)}</div>'
            f'<div class="tokens-total">sum of the tokens\' shares = implicit reward = <b>{total:+.3f}</b> '
            f'({len(shares)} tokens; green: DPO raised the token\'s probability, red: lowered it)</div>')


def leaderboard_html(board: Board) -> str:
    """The ranking table: rating, 95% interval, battles per model."""
    if not board.battles:
        return "<p>No votes yet: vote in the Arena tab, or let a judge play (<code>python -m app.arena</code>).</p>"
    rows = "".join(
        f"<tr><td>{k + 1}</td><td>{html.escape(n)}</td><td><b>{r:.0f}</b></td>"
        f"<td>{lo:.0f} – {hi:.0f}</td><td>{v}</td></tr>"
        for k, (n, r, lo, hi, v) in enumerate(zip(board.names, board.rating, board.lower, board.upper, board.votes)))
    style = "" if board.length_coef is None else (
        f"<p>Style control: length coefficient γ = {board.length_coef:+.2f} "
        "(&gt; 0: the longer answer tends to win whoever wrote it; the ratings are net of it).</p>")
    return (f'<table class="board"><thead><tr><th>#</th><th>model</th><th>rating</th><th>95% interval</th>'
            f"<th>votes</th></tr></thead><tbody>{rows}</tbody></table>"
            f"<p>{board.battles} battles; Bradley-Terry with ties as half a win, Elo scale (mean 1000), "
            f"bootstrap 95% intervals.</p>{style}")


def heatmap_html(board: Board) -> str:
    """Win-rate matrix: row model's share of wins against the column model (ties half), coloured."""
    if not board.battles:
        return ""
    head = "".join(f"<th>{html.escape(n)}</th>" for n in board.names)
    body = ""
    for name, row in zip(board.names, board.win_rate):
        cells = ""
        for x in row:
            if x is None:
                cells += '<td class="none">–</td>'
            else:
                colour = _tint(GREEN if x >= 0.5 else RED, abs(x - 0.5) * 2)
                cells += f'<td style="background:{colour}">{x:.0%}</td>'
        body += f"<tr><th>{html.escape(name)}</th>{cells}</tr>"
    return (f'<table class="heatmap"><thead><tr><th>wins of ↓ against →</th>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")
