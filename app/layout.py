"""The Gradio page: layout and wiring only; what happens on a click is in `app.handlers`."""

# No `from __future__ import annotations` here: Gradio finds the browser session by the parameter
# annotated `gr.Request`, which must be the class, not a string.

from app.handlers import Comparer
from minidpo.generation import DEFAULTS

CSS = """
.answer textarea { font-size: 15px; line-height: 1.5; }
#title { margin-bottom: 0; }
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
        gr.Markdown(
            f"**SFT** `{comparer.sft.path}` · **DPO** `{comparer.dpo.path}` · β = {comparer.beta:g} "
            f"(from {comparer.beta_source}) · the implicit reward β·log(πDPO(answer)/πSFT(answer)) says which "
            "answer DPO prefers.", elem_id="models-line")
        if about := about_line(comparer):
            gr.Markdown(about, elem_id="about")
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
                    "(`prompt` / `chosen` / `rejected`), ready for the next round of DPO.")
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

        # The browser session (request.session_hash) lets Stop reach this browser's generation only.
        def compare_in_session(prompt, system, max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                               seed, request: gr.Request):
            values = (max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed)
            yield from comparer.compare(prompt, system, *values, session=request.session_hash)

        def blind_in_session(prompt, system, max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                             seed, request: gr.Request):
            values = (max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed)
            yield from comparer.blind(prompt, system, *values, session=request.session_hash)

        def stop_session(request: gr.Request):
            comparer.request_stop(request.session_hash)
            gr.Warning("Generation stopped; the partial answers stay, no rewards were computed.")

        for trigger in (compare_btn.click, prompt.submit):
            trigger(compare_in_session, inputs, [sft_out, dpo_out, sft_stats, dpo_stats, status],
                    concurrency_id="generate", concurrency_limit=1, show_progress="hidden")
        stop_btn.click(stop_session, None, None, queue=False)

        blind_btn.click(lambda *args: (None, ""), None, [comparison, vote_status], queue=False).then(
            blind_in_session, inputs, [a_out, b_out, blind_status, comparison],
            concurrency_id="generate", concurrency_limit=1, show_progress="hidden")
        blind_stop.click(stop_session, None, None, queue=False)
        vote_a.click(lambda c: comparer.vote(c, "A"), comparison, [vote_status, comparison])
        vote_b.click(lambda c: comparer.vote(c, "B"), comparison, [vote_status, comparison])
        vote_tie.click(lambda c: comparer.vote(c, "skip"), comparison, [vote_status, comparison])
    return demo


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
