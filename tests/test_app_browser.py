"""The app in a real (Debian) Chromium: compare, stats, blind vote, the arena (names revealed, a second turn, both bad,
regenerate, tie), the leaderboard changing, token colours, thumbs, and no request leaves the machine."""

from __future__ import annotations

import json
import os
import socket
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


def test_arena_leaderboard_thumbs_and_token_colours(page, served, tmp_path):
    from playwright.sync_api import expect

    from app.leaderboard import read_battles

    _, comparer = served
    before = len(read_battles(comparer.votes.battles_path))
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
    assert page.external_requests == []
