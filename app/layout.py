"""The Gradio page: layout and wiring only; what happens on a click is in `app.handlers`."""

# No `from __future__ import annotations` here: Gradio finds the browser session by the parameter
# annotated `gr.Request`, which must be the class, not a string.

from app.handlers import Comparer
from minidpo.generation import DEFAULTS
from minidpo.health import health_markdown

CSS = """
.answer textarea { font-size: 15px; line-height: 1.5; }
#title { margin-bottom: 0; }
.tokens { font-size: 15px; line-height: 1.9; white-space: pre-wrap; }
.tok { border-radius: 3px; padding: 1px 0; }
.tokens-total { font-size: 13px; margin-top: 4px; }
table.board td, table.board th, table.heatmap td, table.heatmap th { padding: 4px 10px; text-align: center; }
"""
REAL_MODEL_RECIPE = "the README's SmolLM2 section (`make smollm2-train`, `make smollm2-app`)"


def about_line(comparer: Comparer) -> str:
    """What the models are, in one line, when they are the demo's (nobody should expect a chat model)."""
    from app.examples import demo_preset

    info = demo_preset(comparer.dpo.path) or demo_preset(comparer.sft.path)
    if not info:
        return ""
    n = info.get("n_params") or sum(p.numel() for p in comparer.dpo.model.parameters())
    return (f"*These are the demo's models: {n / 1e6:.1f}M parameters, trained from scratch on templated "
            "bilingual data in a few minutes, so they answer in the templates they saw; they are not chat models. "
            f"For a real instruct model, see {REAL_MODEL_RECIPE}.*")


def build_app(comparer: Comparer, *, default_max_new_tokens: int = DEFAULTS.max_new_tokens, examples=None):
    """The Gradio Blocks page for `comparer`. Launch it with `launch_kwargs()` (theme and css go there).
    examples: [prompt, system] rows; default `app.examples.examples_for` the DPO run."""
    import gradio as gr

    from app.examples import examples_for

    limit = comparer.max_positions - 1 if comparer.max_positions else 4096
    max_tokens_cap = max(1, min(4096, limit))
    if examples is None:
        def fits(prompt, system):
            try:
                comparer.session.prepare(prompt, system, DEFAULTS)
                return True
            except ValueError:
                return False

        examples, examples_note = examples_for(comparer.dpo.path, fits)
    else:
        examples_note = ""
    d = DEFAULTS

    with gr.Blocks(title="minidpo: SFT vs DPO", analytics_enabled=False) as demo:
        gr.Markdown("# SFT vs DPO", elem_id="title")
        more = len(comparer.pool.names) - 2
        gr.Markdown(
            f"**{comparer.pair[0]}** `{comparer.sft.path}` · **{comparer.pair[1]}** `{comparer.dpo.path}`"
            + (f" · and {more} more in the pool ({', '.join(comparer.pool.names[2:])})" if more > 0 else "")
            + f" · β = {comparer.beta:g} (from {comparer.beta_source}) · the implicit reward "
            "β·log(πDPO(answer)/πSFT(answer)) says which answer DPO prefers.", elem_id="models-line")
        if about := about_line(comparer):
            gr.Markdown(about, elem_id="about")
        if health := health_markdown(comparer.dpo.path):  # the DPO run's training-time warnings (docs/health.md)
            gr.Markdown(health.replace("## ", "#### ", 1), elem_id="run-health")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Ask something…", elem_id="prompt")
                system = gr.Textbox(label="System prompt (optional)", lines=1, elem_id="system")
                gr.Examples(examples, inputs=[prompt, system], label="Examples")
                if examples_note:
                    gr.Markdown(examples_note, elem_id="examples-note")
            with gr.Column(scale=2), gr.Accordion("Generation settings (the same defaults as make eval)", open=True):
                settings = [  # the order of SamplingSettings' fields, as the handlers take them
                    gr.Slider(1, max_tokens_cap, value=min(default_max_new_tokens, max_tokens_cap), step=1,
                              label="Max new tokens", elem_id="max-new-tokens"),
                    gr.Slider(0.0, 2.0, value=d.temperature, step=0.05, label="Temperature (0 = greedy)"),
                    gr.Slider(0.05, 1.0, value=d.top_p, step=0.01, label="Top-p"),
                    gr.Slider(0, 200, value=d.top_k, step=1, label="Top-k (0 = off)"),
                    gr.Slider(0.5, 2.0, value=d.repetition_penalty, step=0.05, label="Repetition penalty (1 = off)"),
                    gr.Number(value=d.seed, precision=0, label="Seed", elem_id="seed"),
                ]
        inputs = [prompt, system, *settings]

        pool = comparer.pool
        with gr.Tabs():
            with gr.Tab("Side by side", id="compare"):
                with gr.Row():
                    left = gr.Dropdown(pool.names, value=comparer.pair[0], label="Left (the reference)",
                                       elem_id="left-model", scale=2)
                    right = gr.Dropdown(pool.names, value=comparer.pair[1], label="Right (the policy)",
                                        elem_id="right-model", scale=2)
                    colour = gr.Checkbox(False, label="Colour tokens by their share of the implicit reward",
                                         elem_id="colour-tokens", scale=2)
                with gr.Row():
                    compare_btn = gr.Button("Compare", variant="primary", scale=4, elem_id="compare-btn")
                    stop_btn = gr.Button("Stop", variant="stop", scale=1, elem_id="stop-btn")
                status = gr.Markdown(elem_id="status")
                columns = []
                with gr.Row(equal_height=True):
                    for side, name, elem in (("A", comparer.pair[0], "sft"), ("B", comparer.pair[1], "dpo")):
                        with gr.Column():
                            out = gr.Textbox(label=f"{name} · {pool.sources[name]}", lines=12, max_lines=30,
                                             interactive=False, elem_id=f"{elem}-answer", elem_classes="answer")
                            # thinking folded, tool calls as JSON; empty for a plain answer
                            rendered = gr.Markdown(elem_id=f"{elem}-rendered")
                            stats = gr.Markdown(elem_id=f"{elem}-stats")
                            tokens = gr.HTML(elem_id=f"{elem}-tokens")
                            with gr.Row():
                                up = gr.Button("Thumbs up: a good answer", size="sm", elem_id=f"thumb-up-{elem}")
                                down = gr.Button("Thumbs down: a bad answer", size="sm", elem_id=f"thumb-down-{elem}")
                            columns.append((side, out, stats, tokens, up, down, rendered))
                thumb_status = gr.Markdown(elem_id="thumb-status")
            (_, sft_out, sft_stats, sft_tokens, *_, sft_rendered) = columns[0]
            (_, dpo_out, dpo_stats, dpo_tokens, *_, dpo_rendered) = columns[1]

            with gr.Tab("Arena · blind vote", id="blind"):
                gr.Markdown(
                    f"Two models drawn at random from the pool of {len(pool.names)} answer the prompt above, shown "
                    "as **A** and **B**; their names are revealed after your vote. *A* or *B is better* appends a "
                    f"preference pair to `{comparer.votes_path}`; *both are bad* two unpaired examples (label "
                    "false); a tie only counts on the leaderboard. *Continue* asks both models the prompt box's new "
                    "text as the next turn, after the answer you preferred.")
                with gr.Row():
                    blind_btn = gr.Button("Generate A / B", variant="primary", scale=3, elem_id="blind-btn")
                    regen_btn = gr.Button("Regenerate", scale=1, elem_id="regenerate-btn")
                    continue_btn = gr.Button("Continue the conversation", scale=2, elem_id="continue-btn")
                    blind_stop = gr.Button("Stop", variant="stop", scale=1, elem_id="blind-stop-btn")
                conversation = gr.Markdown(elem_id="conversation")
                blind_status = gr.Markdown(elem_id="blind-status")
                with gr.Row(equal_height=True):
                    with gr.Column():
                        a_out = gr.Textbox(label="A", lines=12, max_lines=30, interactive=False,
                                           elem_id="a-answer", elem_classes="answer")
                        a_rendered = gr.Markdown(elem_id="a-rendered")
                    with gr.Column():
                        b_out = gr.Textbox(label="B", lines=12, max_lines=30, interactive=False,
                                           elem_id="b-answer", elem_classes="answer")
                        b_rendered = gr.Markdown(elem_id="b-rendered")
                with gr.Row():
                    vote_a = gr.Button("A is better", elem_id="vote-a")
                    vote_tie = gr.Button("Tie", elem_id="vote-tie")
                    vote_bad = gr.Button("Both are bad", elem_id="vote-both-bad")
                    vote_skip = gr.Button("Skip", elem_id="vote-skip")
                    vote_b = gr.Button("B is better", elem_id="vote-b")
                vote_status = gr.Markdown(elem_id="vote-status")
                comparison = gr.State(None)

            with gr.Tab("Leaderboard", id="leaderboard") as board_tab:
                with gr.Row():
                    style = gr.Checkbox(False, label="Style control: answer length as a covariate",
                                        elem_id="style-control")
                    refresh = gr.Button("Refresh", size="sm", elem_id="refresh-board")
                board_html = gr.HTML(elem_id="leaderboard")
                heatmap = gr.HTML(elem_id="heatmap")

        # The browser session (request.session_hash) lets Stop reach this browser's generation only.
        def compare_in_session(left, right, colour, prompt, system, max_new_tokens, temperature, top_p, top_k,
                               repetition_penalty, seed, request: gr.Request):
            values = (max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed)
            for out in comparer.compare_views(prompt, system, *values, session=request.session_hash, left=left,
                                              right=right, colour=colour):
                yield *out[:5], "", "", "", *out[5:]
            yield *out[:5], *comparer.token_colours(request.session_hash), "", *out[5:]

        def blind_in_session(previous, mode, prompt, system, max_new_tokens, temperature, top_p, top_k,
                             repetition_penalty, seed, request: gr.Request):
            values = (max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed)
            earlier = "" if mode == "new" else conversation_markdown(previous, with_its_turn=mode == "continue")
            for out in comparer.blind_views(prompt, system, *values, session=request.session_hash,
                                            previous=previous if mode != "new" else None,
                                            regenerate=mode == "regenerate"):
                yield *out[:4], earlier, *out[4:]

        def stop_session(request: gr.Request):
            comparer.request_stop(request.session_hash)
            gr.Warning("Generation stopped; the partial answers stay, no rewards were computed.")

        def thumb(side, up):
            def handler(request: gr.Request):
                return comparer.thumb(side, up, request.session_hash)
            return handler

        outputs = [sft_out, dpo_out, sft_stats, dpo_stats, status, sft_tokens, dpo_tokens, thumb_status,
                   sft_rendered, dpo_rendered]
        for trigger in (compare_btn.click, prompt.submit):
            trigger(compare_in_session, [left, right, colour, *inputs], outputs,
                    concurrency_id="generate", concurrency_limit=1, show_progress="hidden")
        stop_btn.click(stop_session, None, None, queue=False)
        for dropdown, box in ((left, sft_out), (right, dpo_out)):
            dropdown.change(lambda n: gr.update(label=f"{n} · {pool.sources[n]}"), dropdown, box, queue=False)
        for side, _, _, _, up, down, _ in columns:
            up.click(thumb(side, True), None, thumb_status)
            down.click(thumb(side, False), None, thumb_status)

        arena = dict(concurrency_id="generate", concurrency_limit=1, show_progress="hidden")
        arena_out = [a_out, b_out, blind_status, comparison, conversation, a_rendered, b_rendered]
        for button, mode in ((blind_btn, "new"), (regen_btn, "regenerate"), (continue_btn, "continue")):
            button.click(lambda: "", None, vote_status, queue=False).then(
                blind_in_session, [comparison, gr.State(mode), *inputs], arena_out, **arena)
        blind_stop.click(stop_session, None, None, queue=False)
        for button, choice in ((vote_a, "A"), (vote_b, "B"), (vote_tie, "tie"), (vote_bad, "both_bad"),
                               (vote_skip, "skip")):
            button.click(lambda c, choice=choice: comparer.vote(c, choice), comparison, [vote_status, comparison]).then(
                comparer.board, style, [board_html, heatmap])

        for trigger in (refresh.click, style.change, board_tab.select, demo.load):
            trigger(comparer.board, style, [board_html, heatmap])
    return demo


def conversation_markdown(comparison, with_its_turn: bool = False) -> str:
    """The earlier turns of an arena conversation (both models saw the same ones); with_its_turn: and the
    comparison's own turn (its prompt and the answer kept after the vote), when the conversation goes on."""
    if not comparison:
        return ""
    history = list(comparison.get("history") or [])
    if with_its_turn and comparison.get("voted"):
        history += [{"role": "user", "content": comparison["prompt"]},
                    {"role": "assistant", "content": comparison["kept"]}]
    if not history:
        return ""
    lines = [f"**{'You' if m['role'] == 'user' else 'Kept answer'}:** {m['content']}" for m in history]
    return "Earlier turns:\n\n" + "\n\n".join(lines)


def launch_kwargs(host: str = "127.0.0.1", port: int = 7860) -> dict:
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
