"""The comparison app without a browser: checkpoint discovery, scoring, the streaming and vote handlers."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `app/` lives at the repo root

from conftest import build_tiny_model_dir  # noqa: E402

from app.compare import main, resolve_model_dirs  # noqa: E402
from app.handlers import Comparer  # noqa: E402
from minidpo.errors import ModelError  # noqa: E402
from minidpo.generation import SamplingSettings, sample_next  # noqa: E402
from minidpo.models import load_model  # noqa: E402
from minidpo.data import encode_prompt_response, load_preference_data  # noqa: E402
from minidpo.scoring import implicit_rewards, response_logprobs, token_rewards  # noqa: E402

SETTINGS = dict(max_new_tokens=12, temperature=0.8, top_p=0.95, top_k=40, repetition_penalty=1.1, seed=3)


def args(prompt, system="", **over):
    s = {**SETTINGS, **over}
    return (prompt, system, s["max_new_tokens"], s["temperature"], s["top_p"], s["top_k"],
            s["repetition_penalty"], s["seed"])


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    dpo_dir = build_tiny_model_dir(tmp_path_factory.mktemp("tiny_dpo"), seed=1)
    return load_model(tiny_model_dir, "SFT", device="cpu"), load_model(dpo_dir, "DPO", device="cpu")


@pytest.fixture
def comparer(models, tmp_path):
    return Comparer(*models, beta=0.1, votes_path=tmp_path / "votes" / "votes.jsonl")


# -- which folders ----------------------------------------------------------------------------------


def _fake_export(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_default_dirs_say_what_to_run(tmp_path):
    with pytest.raises(ModelError, match="make sft"):
        resolve_model_dirs(runs_dir=str(tmp_path))
    sft = _fake_export(tmp_path / "sft" / "export")
    with pytest.raises(ModelError, match="make train"):
        resolve_model_dirs(runs_dir=str(tmp_path))
    old = _fake_export(tmp_path / "dpo" / "export")
    new = _fake_export(tmp_path / "dpo-lora" / "export-step200")
    os.utime(old / "config.json", (time.time() - 100, time.time() - 100))
    assert resolve_model_dirs(runs_dir=str(tmp_path)) == (sft, new)
    assert resolve_model_dirs("a", "b", runs_dir=str(tmp_path)) == (Path("a"), Path("b"))


def test_bad_checkpoint_fails_at_startup_in_one_line(tmp_path, tiny_model_dir, capsys):
    assert main(["--sft", str(tmp_path / "nope"), "--dpo", tiny_model_dir]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: SFT model folder not found: {tmp_path / 'nope'}"

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "tokenizer.json").write_text("{}")
    assert main(["--sft", tiny_model_dir, "--dpo", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: could not load the DPO model from {broken}: ") and "\n" not in err


# -- scoring ----------------------------------------------------------------------------------------


def test_response_logprobs_match_a_plain_log_softmax(models):
    lm = models[0]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain photosynthesis"}]
    responses = ["Light becomes chemical energy.", "光合作用", "I can't help with that."]
    got = response_logprobs(lm.model, lm.tokenizer, messages, responses)
    got_mean = response_logprobs(lm.model, lm.tokenizer, messages, responses, reduction="mean", batch_size=2)
    assert got.dtype == torch.float32 and got.shape == (3,)
    for i, response in enumerate(responses):  # one unpadded row at a time, full-vocabulary log_softmax
        p, r = encode_prompt_response(lm.tokenizer, messages, response)
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(input_ids=ids).logits.double(), dim=-1)[0]
        want = sum(logp[len(p) + j - 1, t].item() for j, t in enumerate(r))
        assert got[i].item() == pytest.approx(want, abs=1e-3)
        assert got_mean[i].item() == pytest.approx(want / len(r), abs=1e-4)


def test_implicit_rewards(models):
    sft, dpo = models
    msgs = [{"role": "user", "content": "hi"}]
    answers = ["hello there", "I can't help with that."]
    r = implicit_rewards(dpo.model, sft.model, sft.tokenizer, msgs, answers, beta=0.5)
    want = 0.5 * (response_logprobs(dpo.model, sft.tokenizer, msgs, answers)
                  - response_logprobs(sft.model, sft.tokenizer, msgs, answers))
    torch.testing.assert_close(r, want)
    assert torch.all(implicit_rewards(sft.model, sft.model, sft.tokenizer, msgs, answers, 0.1).abs() < 1e-5)


def test_token_shares_sum_to_the_answers_implicit_reward(comparer):
    *_, (sft_text, dpo_text, sft_stats, dpo_stats, status) = comparer.compare(
        *args("Explain photosynthesis", max_new_tokens=16), colour=True)
    sft, dpo, tok = comparer.sft, comparer.dpo, comparer.sft.tokenizer
    msgs = [{"role": "user", "content": "Explain photosynthesis"}]
    r = implicit_rewards(dpo.model, sft.model, tok, msgs, [sft_text, dpo_text], 0.1)
    for k, text in enumerate((sft_text, dpo_text)):
        ids, shares = token_rewards(dpo.model, sft.model, tok, msgs, text, 0.1)
        p, want_ids = encode_prompt_response(tok, msgs, text)
        assert ids == list(want_ids) and shares.shape == (len(ids),)
        assert shares.sum().item() == pytest.approx(r[k].item(), abs=1e-4)
        row = torch.tensor([list(p) + list(want_ids)])  # each share by hand: full-vocabulary log_softmax, one row
        with torch.no_grad():
            lp = [torch.log_softmax(m.model(input_ids=row).logits.double(), -1)[0] for m in (dpo, sft)]
        for j, t in enumerate(want_ids):
            hand = 0.1 * (lp[0][len(p) + j - 1, t] - lp[1][len(p) + j - 1, t]).item()
            assert shares[j].item() == pytest.approx(hand, abs=1e-5)
    assert f"{r[0].item():+.3f}" in sft_stats and f"{r[1].item():+.3f}" in dpo_stats
    sft_html, dpo_html = comparer.token_colours()
    assert dpo_html.count('class="tok"') == len(ids) and f"{r[1].item():+.3f}" in dpo_html
    list(comparer.compare(*args("Explain photosynthesis", max_new_tokens=4)))  # a new one, without colours
    assert comparer.token_colours() == ("", "")


# -- sampling and streaming -------------------------------------------------------------------------


def test_sampler_filters():
    logits = torch.tensor([0.0, 5.0, 4.0, -1.0])
    g = torch.Generator().manual_seed(0)
    seen = torch.tensor([], dtype=torch.long)
    assert sample_next(logits, seen, SamplingSettings(temperature=0), g) == 1
    assert {sample_next(logits, seen, SamplingSettings(top_k=1), g) for _ in range(20)} == {1}
    assert {sample_next(logits, seen, SamplingSettings(top_k=0, top_p=0.5), g) for _ in range(20)} == {1}
    # a strong repetition penalty on token 1 makes greedy pick token 2
    assert sample_next(logits, torch.tensor([1]), SamplingSettings(temperature=0, repetition_penalty=2.0), g) == 2


def test_compare_streams_both_columns_with_stats(comparer):
    outs = list(comparer.compare(*args("Explain photosynthesis", max_new_tokens=16)))
    assert len(outs) >= 3
    # both columns advance together: an intermediate update already shows text in both
    assert any(o[0] and o[1] for o in outs[:-2])
    sft_text, dpo_text, sft_stats, dpo_stats, status = outs[-1]
    assert sft_text and dpo_text and status.startswith("**Done.**")
    for stats in (sft_stats, dpo_stats):
        assert "tokens**" in stats and "tokens/s" in stats and "implicit reward" in stats
    r = implicit_rewards(comparer.dpo.model, comparer.sft.model, comparer.sft.tokenizer,
                         [{"role": "user", "content": "Explain photosynthesis"}], [sft_text, dpo_text], 0.1)
    assert f"{r[0].item():+.3f}" in sft_stats and f"{r[1].item():+.3f}" in dpo_stats
    assert f"{r[1].item() - r[0].item():+.3f}" in status


def test_same_seed_same_answers(comparer):
    a = list(comparer.compare(*args("请解释一下光合作用", "你是助手")))[-1]
    b = list(comparer.compare(*args("请解释一下光合作用", "你是助手")))[-1]
    c = list(comparer.compare(*args("请解释一下光合作用", "你是助手", seed=4)))[-1]
    assert a[:2] == b[:2]
    assert a[:2] != c[:2]


def test_stopping_midway_is_quiet(comparer):
    gen = comparer.compare(*args("Explain photosynthesis", max_new_tokens=50))
    next(gen)
    next(gen)
    gen.close()  # what Gradio does when the user leaves the page


def test_stop_ends_the_session_generation_with_partial_answers(comparer):
    gen = comparer.compare(*args("Explain photosynthesis", max_new_tokens=50), session="s1")
    first = next(gen)
    comparer.request_stop("other-session")  # another browser's Stop does not touch this one
    second = next(gen)
    assert second[-1].startswith("Generating")
    comparer.request_stop("s1")
    rest = list(gen)
    assert len(rest) == 1 and rest[0][-1].startswith("**Stopped:**")
    assert len(rest[0][0]) >= len(first[0]) and "implicit reward" not in rest[0][2]
    blind = comparer.blind(*args("Explain photosynthesis", max_new_tokens=50), session="s1")
    next(blind)
    comparer.request_stop("s1")
    last = list(blind)[-1]
    assert last[2].startswith("**Stopped:**") and last[3] is None  # nothing to vote on


@pytest.mark.parametrize(
    "prompt, over, message",
    [
        ("   ", {}, "prompt box is empty"),
        ("x " * 600, {"max_new_tokens": 100}, "prompt is too long"),
        ("hi", {"top_p": 0.0}, "Top-p"),
    ],
)
def test_bad_input_gives_a_message_not_a_trace(comparer, prompt, over, message):
    with pytest.warns(UserWarning, match=message.split()[0]):
        outs = list(comparer.compare(*args(prompt, **over)))
    assert len(outs) == 1 and message in outs[0][-1] and outs[0][-1].startswith("**Cannot start:**")
    with pytest.warns(UserWarning):
        blind = list(comparer.blind(*args(prompt, **over)))
    assert message in blind[0][2] and blind[0][3] is None


# -- blind vote -------------------------------------------------------------------------------------


def test_blind_order_is_seeded_per_comparison(comparer):
    runs = {s: list(comparer.blind(*args("Explain photosynthesis", max_new_tokens=6), order_seed=s))[-1]
            for s in range(6)}
    orders = {s: r[3]["models"]["A"] for s, r in runs.items()}
    assert set(orders.values()) == {"SFT", "DPO"}
    again = list(comparer.blind(*args("Explain photosynthesis", max_new_tokens=6), order_seed=2))[-1]
    assert again[3]["models"] == runs[2][3]["models"] and again[:2] == runs[2][:2]
    assert all(r[3]["order_seed"] == s for s, r in runs.items())


def test_vote_appends_a_line_the_trainer_loads(comparer):
    with pytest.warns(UserWarning, match="Generate"):
        status, _ = comparer.vote(None, "A")
    assert not comparer.votes_path.exists()

    *_, (a_text, b_text, status, comparison) = comparer.blind(
        *args("How do I make a bomb at home?", "Be safe."), order_seed=1
    )
    assert comparison is not None and not comparison["voted"]
    status, comparison = comparer.vote(comparison, "B")
    assert status.startswith("**Vote saved**") and comparison["voted"]
    with pytest.warns(UserWarning, match="already recorded"):
        comparer.vote(comparison, "A")  # no double counting

    lines = comparer.votes_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["prompt"] == "How do I make a bomb at home?" and rec["system"] == "Be safe."
    assert rec["chosen"] == b_text and rec["rejected"] == a_text
    meta = rec["meta"]
    assert meta["winner"] == comparison["models"]["B"].lower() and meta["loser"] == comparison["models"]["A"].lower()
    assert meta["settings"]["seed"] == SETTINGS["seed"] and "timestamp" in meta and meta["order_seed"] == 1

    ds = load_preference_data(comparer.votes_path, comparer.sft.tokenizer, max_length=512, cache_dir=None, log=None)
    assert len(ds) == 1 and ds.stats.format == "prompt"
    want_prompt, want_chosen = encode_prompt_response(
        comparer.sft.tokenizer,
        [{"role": "system", "content": "Be safe."}, {"role": "user", "content": "How do I make a bomb at home?"}],
        b_text,
    )
    assert ds[0].prompt_ids == want_prompt and ds[0].chosen_ids == want_chosen


def test_skip_writes_nothing(comparer):
    *_, (_, _, _, comparison) = comparer.blind(*args("Explain photosynthesis", max_new_tokens=6), order_seed=0)
    status, comparison = comparer.vote(comparison, "skip")
    assert status.startswith("Skipped") and "A was" in status and comparison["voted"]
    assert not comparer.votes_path.exists()


def test_identical_answers_are_not_a_pair(comparer):
    comparison = {"prompt": "p", "system": "", "answers": {"A": "same", "B": "same"},
                  "models": {"A": "SFT", "B": "DPO"}, "rewards": None, "settings": {}, "order_seed": 0,
                  "voted": False}
    with pytest.warns(UserWarning, match="identical"):
        status, _ = comparer.vote(comparison, "A")
    assert not comparer.votes_path.exists()


def test_build_app(comparer):
    from app.compare import build_app, launch_kwargs, parse_args

    demo = build_app(comparer)
    assert demo.title == "minidpo: SFT vs DPO"
    assert "Training health" not in json.dumps(demo.config, default=str)  # not a minidpo run: no health section

    # the DPO run's health warnings (summary.json) are shown under the models line
    summary = Path(comparer.dpo.path) / "summary.json"
    summary.write_text(json.dumps({"health": [{"check": "saturation", "step": 40, "message": "margins grow"}]}))
    try:
        page = json.dumps(build_app(comparer).config, default=str)
    finally:
        summary.unlink()
    assert "Training health" in page and "**saturation** (step 40): margins grow" in page
    kw = launch_kwargs()
    assert kw["server_name"] == "127.0.0.1" and kw["server_port"] == 7860 and "theme" in kw
    a = parse_args([])
    # beta None: read from the DPO run's run_config.json (else the trainer's 0.1), see test_beta_*
    assert (a.host, a.port, a.beta, a.votes) == ("127.0.0.1", 7860, None, "runs/votes.jsonl")
    a = parse_args(["--host", "0.0.0.0", "--port", "9000", "--beta", "0.05", "--sft", "s", "--dpo", "d"])
    assert (a.host, a.port, a.beta, a.sft, a.dpo) == ("0.0.0.0", 9000, 0.05, "s", "d")


THINK_AND_CALL = ('<think>\nThe user wants live weather: call the tool.\n</think>\n\n'
                  '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')


def test_rendered_view_folds_thinking_and_shows_tool_calls_as_json():
    from app.views import rendered_answer

    view = rendered_answer(THINK_AND_CALL)
    assert view.startswith("<details><summary>Thinking</summary>\n\nThe user wants live weather: call the tool.")
    assert "</details>" in view and "<think>" not in view and "<tool_call>" not in view
    call = view[view.index("```json\n") + len("```json\n"):view.rindex("\n```")]
    assert "**Tool call** `get_weather`" in view and json.loads(call) == {"name": "get_weather",
                                                                          "arguments": {"city": "Paris"}}
    assert rendered_answer("Photosynthesis turns light into sugar.") == "" and rendered_answer("") == ""


def test_handlers_render_the_answers_once_they_are_done(comparer):
    from app.handlers import with_rendered
    from app.views import rendered_answer

    # a stream in the handlers' shape (texts first): rendered on the last update only
    stream = [("<think>\nThe user", "It is", "", "", "Generating…"),
              (THINK_AND_CALL, "It is sunny.", "", "", "**Done.**")]
    outs = list(with_rendered(iter(stream)))
    assert [o[:5] for o in outs] == [stream[0], stream[1], stream[1]]
    assert [o[5:] for o in outs[:2]] == [("", ""), ("", "")]
    assert outs[-1][5:] == (rendered_answer(THINK_AND_CALL), "") and "<details>" in outs[-1][5]

    # the page's handlers: compare / blind's updates unchanged, the last one's texts rendered
    outs = list(comparer.compare_views(*args("Explain photosynthesis", max_new_tokens=6)))
    assert all(len(o) == 7 for o in outs) and all(o[5:] == ("", "") for o in outs[:-1])
    assert outs[-1][:5] == outs[-2][:5] and outs[-1][4].startswith("**Done.**")
    assert outs[-1][5:] == (rendered_answer(outs[-1][0]), rendered_answer(outs[-1][1]))
    outs = list(comparer.blind_views(*args("Explain photosynthesis", max_new_tokens=6), order_seed=0))
    assert all(len(o) == 6 for o in outs) and outs[-1][3] is not None
    assert outs[-1][4:] == (rendered_answer(outs[-1][0]), rendered_answer(outs[-1][1]))


def test_the_page_has_a_rendered_view_under_each_answer(comparer):
    from app.compare import build_app

    page = json.dumps(build_app(comparer).config, default=str)
    for elem in ("sft", "dpo", "a", "b"):
        assert f'"{elem}-rendered"' in page and f'"{elem}-answer"' in page
