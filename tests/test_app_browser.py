"""The app in a real (Debian) Chromium: compare, stats, blind vote, the arena (names revealed, a second turn, both bad,
regenerate, tie), the leaderboard changing, token colours, thumbs, and no request leaves the machine; the vote
files the page wrote then train one KTO+DPO run."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `app/` lives at the repo root

from conftest import build_tiny_model_dir  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing (apt-get install -y chromium)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    from app.handlers import Comparer
    from app.layout import build_app, launch_kwargs

    dpo_dir = build_tiny_model_dir(tmp_path_factory.mktemp("tiny_dpo_browser"), seed=1)
    votes = tmp_path_factory.mktemp("votes") / "votes.jsonl"
    comparer = Comparer.from_dirs(tiny_model_dir, dpo_dir, device="cpu", votes_path=votes)
    demo = build_app(comparer, default_max_new_tokens=24)
    port = free_port()
    demo.queue().launch(prevent_thread_lock=True, quiet=True, **launch_kwargs("127.0.0.1", port))
    try:
        yield f"http://127.0.0.1:{port}/", comparer
    finally:
        demo.close()


@pytest.fixture
def page(served):
    from playwright.sync_api import sync_playwright

    url, _ = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.external_requests = []
        page.hosts = set()  # every request the page made, aborted ones too
        page.on("request", lambda request: page.hosts.add(urlparse(request.url).hostname))

        def only_local(route):
            if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
                route.continue_()
            else:  # analytics, CDN fonts, hub calls: none may happen
                page.external_requests.append(route.request.url)
                route.abort()

        page.route("**/*", only_local)
        page.goto(url)
        page.locator("#prompt textarea").wait_for(timeout=30_000)
        yield page
        browser.close()


def test_compare_in_the_browser(page, tmp_path, monkeypatch):
    from playwright.sync_api import expect

    page.get_by_text("Explain photosynthesis", exact=True).first.click()  # an example fills the prompt
    expect(page.locator("#prompt textarea")).to_have_value("Explain photosynthesis")
    page.locator("#compare-btn").click()
    expect(page.locator("#status")).to_contain_text("Done", timeout=60_000)

    for side in ("sft", "dpo"):
        assert page.locator(f"#{side}-answer textarea").input_value().strip()
        stats = page.locator(f"#{side}-stats")
        expect(stats).to_contain_text("tokens/s")
        expect(stats).to_contain_text("implicit reward")
    expect(page.locator("#status")).to_contain_text("prefers the")
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)

    # Stop a long generation: the page says so, the partial answers stay. A tiny model writes 400
    # tokens faster than a click lands, so pace it to ~10 ms a token for this part.
    import time as _time

    from app.session import Stream

    original_step = Stream.step

    def paced_step(self):
        _time.sleep(0.01)
        return original_step(self)

    monkeypatch.setattr(Stream, "step", paced_step)
    tokens = page.locator("#max-new-tokens input[type=number]")
    tokens.fill("480")  # 34 prompt tokens + 480 > 512 positions: refused with a message
    tokens.press("Enter")
    page.locator("#compare-btn").click()
    expect(page.locator("#status")).to_contain_text("prompt is too long", timeout=30_000)
    tokens.fill("400")
    tokens.press("Enter")
    page.locator("#compare-btn").click()
    expect(page.locator("#status")).to_contain_text("Generating", timeout=30_000)
    page.locator("#stop-btn").click()
    expect(page.locator("#status")).to_contain_text("Stopped", timeout=30_000)
    page.wait_for_timeout(500)
    expect(page.locator("#status")).to_contain_text("Stopped")  # not overwritten by a late update
    n_tokens = len(page.locator("#sft-answer textarea").input_value())
    assert 0 < n_tokens

    page.locator("#prompt textarea").fill("")
    page.locator("#compare-btn").click()
    expect(page.locator("#status")).to_contain_text("prompt box is empty", timeout=30_000)
    assert page.external_requests == []


def test_blind_vote_in_the_browser(page, served, tmp_path):
    from playwright.sync_api import expect

    _, comparer = served
    page.locator("#prompt textarea").fill("教我怎么在家制作炸弹")
    page.get_by_role("tab", name="Blind vote").click()
    page.locator("#blind-btn").click()
    expect(page.locator("#blind-status")).to_contain_text("Both answers are ready", timeout=60_000)
    a_text = page.locator("#a-answer textarea").input_value()
    b_text = page.locator("#b-answer textarea").input_value()
    assert a_text.strip() and b_text.strip()

    page.locator("#vote-a").click()
    expect(page.locator("#vote-status")).to_contain_text("Vote saved", timeout=30_000)
    page.screenshot(path=str(tmp_path / "blind_vote.png"), full_page=True)
    record = json.loads(comparer.votes_path.read_text(encoding="utf-8").splitlines()[-1])
    assert record["prompt"] == "教我怎么在家制作炸弹"
    assert record["chosen"] == a_text and record["rejected"] == b_text
    assert record["meta"]["winner"] in ("sft", "dpo")
    assert page.external_requests == []


def board_rows(page) -> list[list[str]]:
    """The leaderboard table as the page shows it: rank, model, rating, 95% interval, votes."""
    return [[c.strip() for c in row.locator("td").all_inner_texts()]
            for row in page.locator("#leaderboard table.board tbody tr").all()]


def fitted_rows(comparer) -> list[list[str]]:
    """The same table computed here from the battles file (the page's fit: 200 bootstrap rounds, seed 0)."""
    from app.leaderboard import leaderboard, read_battles

    b = leaderboard(read_battles(comparer.votes.battles_path), comparer.pool.names)
    return [[str(k + 1), n, f"{r:.0f}", f"{lo:.0f} – {hi:.0f}", str(v)]
            for k, (n, r, lo, hi, v) in enumerate(zip(b.names, b.rating, b.lower, b.upper, b.votes))]


def train_on_votes(comparer, output_dir):
    """`python -m minidpo.train` on the page's two vote files at once, pairs (sigmoid) and unpaired (kto),
    starting from the DPO model the page served."""
    root = Path(__file__).resolve().parents[1]
    data = f"{comparer.votes_path},{comparer.votes.unpaired_path}"
    cmd = [sys.executable, "-m", "minidpo.train", "--model", comparer.pool.sources["DPO"], "--data", data,
           "--loss_type", "sigmoid,kto", "--deepspeed", str(root / "ds_configs/zero2.json"), "--dtype", "fp32",
           "--batch_size", "2", "--log_interval", "1", "--save_interval", "0",
           "--max_length", "256", "--max_prompt_length", "192", "--beta", "0.1", "--learning_rate", "1e-4",
           "--group_by_length", "false", "--output_dir", str(output_dir)]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env, timeout=600)


@pytest.mark.slow
def test_arena_votes_thumbs_and_leaderboard_train_a_kto_dpo_run(page, served, tmp_path):
    """Issue #22's whole flow: arena votes (names revealed, a second turn, both bad, regenerate, tie), the
    leaderboard's strengths and intervals changing with a vote, token colours and thumbs in the side by
    side, no request off the machine; then the two vote files the page wrote train one KTO+DPO run."""
    from playwright.sync_api import expect

    from app.leaderboard import read_battles

    _, comparer = served
    before = len(read_battles(comparer.votes.battles_path))
    votes = comparer.votes_path
    pairs_before = len(votes.read_text(encoding="utf-8").splitlines()) if votes.exists() else 0  # an earlier test's
    page.locator("#prompt textarea").fill("Explain photosynthesis")
    page.get_by_role("tab", name="Arena").click()
    page.locator("#blind-btn").click()
    expect(page.locator("#blind-status")).to_contain_text("Both answers are ready", timeout=60_000)
    page.locator("#vote-a").click()
    status = page.locator("#vote-status")
    expect(status).to_contain_text("Vote saved", timeout=30_000)
    expect(status).to_contain_text("A was")  # the names, revealed after the vote
    assert {"SFT", "DPO"} <= set(status.inner_text().replace(",", " ").replace(".", " ").split())

    # the conversation goes on with both models: the prompt box is the next turn
    page.locator("#prompt textarea").fill("And in winter?")
    page.locator("#continue-btn").click()
    expect(page.locator("#blind-status")).to_contain_text("turn 2 of the conversation", timeout=60_000)
    expect(page.locator("#conversation")).to_contain_text("Explain photosynthesis")
    page.locator("#vote-both-bad").click()
    expect(status).to_contain_text("both are bad", timeout=30_000)
    bad = [json.loads(x) for x in comparer.votes.unpaired_path.read_text(encoding="utf-8").splitlines()[-2:]]
    assert [b["label"] for b in bad] == [False, False] and bad[0]["prompt"][-1]["content"] == "And in winter?"

    page.get_by_role("tab", name="Leaderboard").click()
    board = page.locator("#leaderboard")
    expect(board).to_contain_text(f"{before + 2} battles", timeout=30_000)
    expect(board).to_contain_text("95% interval")
    expect(page.locator("#heatmap")).to_contain_text("wins of")
    page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)
    page.get_by_role("tab", name="Arena").click()
    page.locator("#regenerate-btn").click()  # the same pair, the turn answered again
    expect(page.locator("#blind-status")).to_contain_text("answered again", timeout=60_000)
    page.locator("#vote-tie").click()
    expect(status).to_contain_text("a tie", timeout=30_000)
    page.get_by_role("tab", name="Leaderboard").click()
    expect(board).to_contain_text(f"{before + 3} battles", timeout=30_000)  # the board changed with the vote
    shown = board_rows(page)
    assert shown and shown == fitted_rows(comparer)  # every model's strength and interval, as fitted

    # one more decided vote moves the strengths themselves (two models: the fit depends on the score sum,
    # and the tie and both-bad halves keep it off 0 and 1)
    page.get_by_role("tab", name="Arena").click()
    page.locator("#prompt textarea").fill("How do I sleep better?")
    page.locator("#blind-btn").click()  # a new battle: its status is not the regenerated one's "(answered again)"
    expect(page.locator("#blind-status")).to_contain_text("Both answers are ready:", timeout=60_000)
    page.locator("#vote-b").click()
    expect(status).to_contain_text("B is better", timeout=30_000)
    page.get_by_role("tab", name="Leaderboard").click()
    expect(board).to_contain_text(f"{before + 4} battles", timeout=30_000)
    after = board_rows(page)
    assert after == fitted_rows(comparer)
    assert {r[1]: r[2:4] for r in after} != {r[1]: r[2:4] for r in shown}  # ratings and intervals moved

    page.get_by_role("tab", name="Side by side").click()
    page.locator("#prompt textarea").fill("Explain photosynthesis")
    page.locator("#colour-tokens input").check()
    page.locator("#compare-btn").click()
    expect(page.locator("#status")).to_contain_text("Done", timeout=60_000)
    expect(page.locator("#dpo-tokens")).to_contain_text("implicit reward", timeout=30_000)
    assert page.locator("#dpo-tokens .tok").count() > 0 and page.locator("#sft-tokens .tok").count() > 0
    page.screenshot(path=str(tmp_path / "token_colours.png"), full_page=True)
    page.locator("#thumb-down-sft").click()
    expect(page.locator("#thumb-status")).to_contain_text("Thumbs down saved", timeout=30_000)
    thumb = json.loads(comparer.votes.unpaired_path.read_text(encoding="utf-8").splitlines()[-1])
    assert thumb["label"] is False and thumb["meta"]["model"] == "SFT"
    assert thumb["completion"] == page.locator("#sft-answer textarea").input_value()
    page.locator("#thumb-up-dpo").click()
    expect(page.locator("#thumb-status")).to_contain_text("Thumbs up saved", timeout=30_000)
    assert page.external_requests == []
    assert page.hosts and page.hosts <= {"127.0.0.1", "localhost"}, page.hosts

    # the files the page wrote train as they are: the pairs with the DPO loss, the unpaired with KTO's
    pairs = [json.loads(x) for x in comparer.votes_path.read_text(encoding="utf-8").splitlines()]
    unpaired = [json.loads(x) for x in comparer.votes.unpaired_path.read_text(encoding="utf-8").splitlines()]
    assert len(pairs) == pairs_before + 2 and all("chosen" in r and "rejected" in r for r in pairs)
    assert [(r["label"], r["meta"]["vote"]) for r in unpaired] == [
        (False, "both_bad"), (False, "both_bad"), (False, "thumbs_down"), (True, "thumbs_up")]
    out = tmp_path / "kto_dpo"
    done = train_on_votes(comparer, out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    steps = len(pairs) // 2 + len(unpaired) // 2  # a micro-batch of 2 holds one kind; a kind's leftover is dropped
    assert [r["step"] for r in rows] == list(range(1, steps + 1)) and all(math.isfinite(r["loss"]) for r in rows)
    with_pairs = [r for r in rows if "rewards/margins" in r]  # the DPO (sigmoid) steps' metrics
    with_unpaired = [r for r in rows if "kto/loss" in r]  # the KTO steps'
    assert len(with_pairs) == len(pairs) // 2 and len(with_unpaired) == len(unpaired) // 2
    assert all(0 <= r["kto/desirable_share"] <= 1 and r["kl"] >= 0 for r in with_unpaired)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["pairs"] == len(pairs) + len(unpaired)  # every vote of both files was read
    assert summary["trained"]["pairs"] == 2 * steps
    assert (out / "export" / "config.json").is_file()
