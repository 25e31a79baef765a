"""The inference layer: one loader (minidpo.models), one sampler shared by eval and the app, one set of
flag spellings, beta from the DPO run, the app's examples."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `app/` lives at the repo root

from conftest import build_tiny_model_dir  # noqa: E402

from minidpo.generation import SamplingSettings, generate, generate_ids, prompt_ids_for  # noqa: E402
from minidpo.models import ModelError, load_model, pick_dtype, resolve_beta, stop_ids  # noqa: E402


def _with_eos(folder: Path, eos: str) -> Path:
    """Make `eos` the folder's EOS everywhere (tokenizer, config, generation config): the ChatML template
    still ends each turn with <|im_end|>, which is then NOT the EOS token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.eos_token = eos
    tok.save_pretrained(folder)
    for name in ("config.json", "generation_config.json"):
        path = folder / name
        if path.is_file():
            cfg = json.loads(path.read_text())
            cfg["eos_token_id"] = tok.eos_token_id
            path.write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def end_not_eos(tmp_path_factory):
    """Two tiny models whose end-of-turn token (<|im_end|>) differs from EOS (<|endoftext|>); their
    end-of-turn logit is raised by 4 so that answers do end by themselves, early and at varying points."""
    root = tmp_path_factory.mktemp("end_not_eos")
    models = []
    for role, seed in (("SFT", 0), ("DPO", 1)):
        folder = _with_eos(Path(build_tiny_model_dir(root / role, seed=seed)), "<|endoftext|>")
        lm = load_model(folder, role, device="cpu")
        end = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")

        def favour_end(_module, _inputs, logits, end=end):
            logits = logits.clone()
            logits[..., end] += 4.0
            return logits

        lm.model.lm_head.register_forward_hook(favour_end)
        models.append(lm)
    return models


PROMPTS = ["Explain photosynthesis", "光合作用是什么？", "What is 12 + 7?", "Tell me about the quick brown fox."]


def test_stop_ids_are_eos_and_the_templates_end_of_turn(end_not_eos):
    lm = end_not_eos[0]
    tok = lm.tokenizer
    eos, end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == eos != end
    assert lm.stop_ids == stop_ids(tok) == {eos, end}
    assert lm.pad_id == tok.pad_token_id


def test_the_apps_answer_is_evals_token_for_token(end_not_eos):
    """Same prompt, settings and seed: the app (one row, streamed in lock step with the other model)
    and eval (batched with other prompts, left-padded) sample the same tokens and stop at the same place."""
    from app.session import Session

    sft, dpo = end_not_eos
    session = Session(sft, dpo, beta=0.1)
    end = sft.tokenizer.convert_tokens_to_ids("<|im_end|>")
    stopped_at_end = 0
    for seed in (0, 1, 2):
        settings = SamplingSettings(max_new_tokens=40, temperature=0.9, top_p=0.9, top_k=50, repetition_penalty=1.1,
                                    seed=seed)
        prompts = [prompt_ids_for(sft.tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS]
        evals = {lm.role: generate_ids(lm.model, lm.tokenizer, prompts, settings=settings, stop_ids=lm.stop_ids,
                                       pad_id=lm.pad_id, batch_size=4) for lm in (sft, dpo)}
        texts = {lm.role: generate(lm.model, lm.tokenizer, [[{"role": "user", "content": p}] for p in PROMPTS],
                                   settings=settings, batch_size=3) for lm in (sft, dpo)}
        for k, prompt in enumerate(PROMPTS):
            request = session.prepare(prompt, "", settings)
            *_, (a, b) = session.run(request)
            for stream, lm in ((a, sft), (b, dpo)):
                got = evals[lm.role][k]
                if got and got[-1] == end:
                    stopped_at_end += 1
                    assert stream.decoder.stop_reason[0] == "end of turn"
                    got = got[:-1]
                assert stream.tokens == got, (seed, prompt, lm.role)
                assert stream.answer().text == texts[lm.role][k]
    # the end-of-turn token (not EOS) ended most answers, well before max_new_tokens
    assert stopped_at_end >= 12


def test_dtype_names_and_bad_sources(tmp_path):
    cpu = torch.device("cpu")
    assert pick_dtype("auto", cpu) == torch.float32 and pick_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ModelError, match="--dtype float16: choose one of"):  # the app's old spelling was removed
        pick_dtype("float16", cpu)
    with pytest.raises(ModelError, match="--dtype half: choose one of auto, bf16, fp16, fp32"):
        pick_dtype("half", cpu)
    with pytest.raises(ModelError, match=f"SFT model folder not found: {tmp_path / 'nope'}"):
        load_model(tmp_path / "nope", "SFT")
    (tmp_path / "junk.gguf").write_text("not a model")
    from minidpo.errors import ConfigError

    with pytest.raises(ConfigError, match="--dpo .*junk.gguf: not a GGUF file"):
        load_model(tmp_path / "junk.gguf", "DPO")


# -- beta from the DPO run ----------------------------------------------------------------------------


def _run_with_beta(tmp_path, tiny_model_dir, beta):
    import shutil

    export = tmp_path / "dpo-run" / "export"
    shutil.copytree(tiny_model_dir, export)
    (export.parent / "run_config.json").write_text(json.dumps({"run": {"beta": beta, "data": "none"}}))
    return export


def test_beta_comes_from_the_run_config_and_a_flag_overrides(tmp_path, tiny_model_dir):
    from app.handlers import Comparer
    from app.layout import build_app

    export = _run_with_beta(tmp_path, tiny_model_dir, 0.5)
    assert resolve_beta(None, export) == (0.5, str(export.parent / "run_config.json"))
    assert resolve_beta(0.25, export) == (0.25, "--beta")
    assert resolve_beta(None, tmp_path)[0] == 0.1  # no run config: the trainer's default, and it says so
    assert "default 0.1" in resolve_beta(None, tmp_path)[1]
    with pytest.raises(ModelError, match="--beta must be > 0"):
        resolve_beta(0.0, export)

    comparer = Comparer.from_dirs(tiny_model_dir, export, device="cpu", votes_path=tmp_path / "v.jsonl")
    assert comparer.beta == 0.5 and comparer.beta_source.endswith("run_config.json")
    *_, (sft_text, dpo_text, sft_stats, _, status) = comparer.compare("hi", "", 6, 0.7, 0.95, 0, 1.0, 0)
    from minidpo.scoring import implicit_rewards

    r = implicit_rewards(comparer.dpo.model, comparer.sft.model, comparer.sft.tokenizer,
                         [{"role": "user", "content": "hi"}], [sft_text, dpo_text], 0.5)
    assert f"{r[0].item():+.3f}" in sft_stats and "β = 0.5" in status
    page = json.dumps(build_app(comparer).config, ensure_ascii=False, default=str)
    assert f"β = 0.5 (from {export.parent / 'run_config.json'})" in page

    overridden = Comparer.from_dirs(tiny_model_dir, export, device="cpu", beta=0.2, votes_path=tmp_path / "v.jsonl")
    assert (overridden.beta, overridden.beta_source) == (0.2, "--beta")


# -- one spelling of shared flags ---------------------------------------------------------------------


def test_eval_flags_one_spelling(tiny_model_dir, tmp_path):
    from minidpo.demo.generate import write_dataset
    from minidpo.eval.cli import build_parser, main

    new = ["--sft", "s", "--dpo", "d", "--data", "h", "--output_dir", "o", "--batch_size", "4", "--n_generate", "2",
           "--max_new_tokens", "5", "--top_p", "0.5", "--top_k", "3", "--repetition_penalty", "1.2", "--n_kl", "1",
           "--n_examples", "1", "--dtype", "bf16", "--data_format", "prompt"]
    old = ["--sft", "s", "--dpo", "d", "--data", "h", "--out", "o", "--batch-size", "4", "--n-generate", "2",
           "--max-new-tokens", "5", "--top-p", "0.5", "--top-k", "3", "--repetition-penalty", "1.2", "--n-kl", "1",
           "--n-examples", "1", "--dtype", "bfloat16", "--data_format", "prompt"]
    a = vars(build_parser().parse_args(new))
    assert a["dtype"] == "bf16" and a["output_dir"] == "o" and a["batch_size"] == 4
    with pytest.raises(SystemExit):  # the old spellings were removed (issue 21): one spelling, the run config's
        build_parser().parse_args(old)

    write_dataset(tmp_path / "data", seed=0, n_train=8, n_heldout=10)
    out = tmp_path / "eval"
    res = main(["--sft", tiny_model_dir, "--dpo", tiny_model_dir, "--data", str(tmp_path / "data/heldout.jsonl"),
                "--output_dir", str(out), "--batch_size", "4", "--n_generate", "3", "--max_new_tokens", "4",
                "--n_kl", "0"])
    assert res["judge"] is None  # no --judge: preference metrics (and answers) only; the core needs no demo
    assert len(res["examples"]) == 3 and res["settings"]["batch_size"] == 4
    assert (out / "eval.json").is_file()
    with pytest.raises(SystemExit) as e:  # a bad judge: one line, exit status 2
        main(["--sft", tiny_model_dir, "--dpo", tiny_model_dir, "--data", "x", "--output_dir", str(out),
              "--judge", "no.such.module:judge"])
    assert e.value.code == 2


def test_app_flags_one_spelling():
    from app.compare import parse_args

    a = parse_args(["--max_new_tokens", "64", "--runs_dir", "r", "--dtype", "fp32", "--tokenizer", "t"])
    assert (a.max_new_tokens, a.runs_dir, a.tokenizer) == (64, "r", "t")
    assert pick_dtype(a.dtype, torch.device("cpu")) == torch.float32
    with pytest.raises(SystemExit):  # the old spellings were removed (issue 21)
        parse_args(["--max-new-tokens", "64", "--dtype", "float32"])
    assert parse_args([]).max_new_tokens == SamplingSettings().max_new_tokens  # eval's defaults


def test_one_set_of_sampling_defaults():
    from app.layout import build_app  # noqa: F401 - the page reads minidpo.generation.DEFAULTS
    from minidpo.eval.cli import build_parser
    from minidpo.generation import DEFAULTS

    a = build_parser().parse_args(["--sft", "s", "--dpo", "d", "--data", "h", "--output_dir", "o"])
    assert (a.temperature, a.top_p, a.top_k, a.repetition_penalty, a.max_new_tokens, a.seed) == (
        DEFAULTS.temperature, DEFAULTS.top_p, DEFAULTS.top_k, DEFAULTS.repetition_penalty, DEFAULTS.max_new_tokens,
        DEFAULTS.seed) == (0.7, 0.95, 0, 1.0, 160, 0)


# -- held-out data in the trainer's other formats -----------------------------------------------------


def test_eval_reads_every_format_the_trainer_reads(tiny_model_dir, tmp_path):
    from minidpo.eval import evaluate

    other = build_tiny_model_dir(tmp_path / "other", seed=1)
    pairs = [("What is 12 + 7?", "12 + 7 = 19.", "It is 20."), ("Explain photosynthesis", "Light to sugar.", "No."),
             ("光合作用是什么？", "光合作用是植物的过程。", "不知道。")]
    prompt_fmt = tmp_path / "prompt.jsonl"
    prompt_fmt.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}, ensure_ascii=False) + "\n"
                                  for p, c, r in pairs), encoding="utf-8")
    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text(json.dumps([{"conversations": [{"from": "human", "value": p}], "chosen": {"from": "gpt", "value": c},
                                     "rejected": {"from": "gpt", "value": r}} for p, c, r in pairs], ensure_ascii=False),
                        encoding="utf-8")
    kw = dict(beta=0.1, n_generate=0, n_kl=0, tensorboard=False)
    a = evaluate(tiny_model_dir, str(other), prompt_fmt, tmp_path / "a", **kw)["preference"]
    b = evaluate(tiny_model_dir, str(other), sharegpt, tmp_path / "b", **kw)["preference"]
    assert a == b and a["n_pairs"] == 3


# -- examples -----------------------------------------------------------------------------------------


def test_examples_chosen_by_measurement():
    from app.pick_examples import pick

    m = [dict(axis="refusal", lang="en", prompt="p1", dpo_pass=8, sft_pass=1),
         dict(axis="refusal", lang="en", prompt="p2", dpo_pass=7, sft_pass=0),
         dict(axis="refusal", lang="en", prompt="p3", dpo_pass=8, sft_pass=8),  # no better than SFT
         dict(axis="refusal", lang="zh", prompt="p4", dpo_pass=6, sft_pass=0),  # 6 of 8 seeds: not enough
         dict(axis="fact", lang="zh", prompt="p5", dpo_pass=7, sft_pass=6)]
    assert [e["prompt"] for e in pick(m, min_pass=7, per_group=2)] == ["p5", "p1", "p2"]  # axes by name
    assert [e["prompt"] for e in pick(m, min_pass=7, per_group=1, axis_order=("refusal", "fact"))] == ["p1", "p5"]


def test_examples_for_a_run(tmp_path):
    from app.examples import EXAMPLES, examples_for

    export = tmp_path / "run" / "export"
    export.mkdir(parents=True)
    assert examples_for(export)[0] == EXAMPLES  # nothing known about the run: the seed's prompts
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("")
    (data / "heldout.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "chosen": "a", "rejected": "b", "axis": ax, "lang": lang}) + "\n"
                for p, ax, lang in [("q1", "fact", "en"), ("q2", "fact", "en"), ("q3", "fact", "zh"),
                                    ("q4" * 50, "refusal", "en")]))
    (export.parent / "run_config.json").write_text(json.dumps({"run": {"data": str(data / "train.jsonl")}}))
    rows, note = examples_for(export, fits=lambda prompt, system: len(prompt) < 100)
    assert rows == [["q1", ""], ["q3", ""]] and "held-out" in note  # one per axis and language; too long: dropped
    (export.parent / "app_examples.json").write_text(json.dumps(
        {"measured": {"seeds": 8, "min_pass": 7}, "examples": [{"prompt": "m1", "system": "s"}]}))
    rows, note = examples_for(export)
    assert rows == [["m1", "s"]] and "measurement" in note


def test_the_page_says_what_the_demo_model_is(tmp_path):
    from app.examples import demo_preset

    init = tmp_path / "runs" / "demo-init"
    init.mkdir(parents=True)
    (init / "minidpo_init.json").write_text(json.dumps({"preset": "demo", "n_params": 1907520}))
    for run, parent in (("sft", "runs/demo-init"), ("dpo", "runs/sft/export")):  # paths as training wrote them
        (tmp_path / "runs" / run / "export").mkdir(parents=True)
        (tmp_path / "runs" / run / "run_config.json").write_text(json.dumps({"run": {"model": parent}}))
    assert demo_preset(tmp_path / "runs" / "dpo" / "export")["n_params"] == 1907520
    (tmp_path / "runs" / "sft" / "run_config.json").write_text(json.dumps({"run": {"model": "elsewhere"}}))
    assert demo_preset(tmp_path / "runs" / "dpo" / "export") is None


def test_examples_picked_by_the_verify_judge(tiny_model_dir, tmp_path):
    from app.pick_examples import follows_every_instruction, main
    from minidpo.iterate.verifier import ifeval_prompts

    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"key": 1, "prompt": "Describe rain in lowercase.", "instruction_id_list": ["change_case:english_lowercase"],
         "kwargs": [{}]},
        {"key": 2, "prompt": "List two fruits without commas, ending with 'Done.'",
         "instruction_id_list": ["punctuation:no_comma", "startend:end_checker"], "kwargs": [{}, {"end_phrase": "Done."}]},
    ]), encoding="utf-8")
    lower, two = ifeval_prompts(data)
    assert follows_every_instruction(lower, "rain falls softly.") is True
    assert follows_every_instruction(lower, "Rain falls.") is False
    assert follows_every_instruction(two, "apples and pears. Done.") is True
    assert follows_every_instruction(two, "apples, pears. Done.") is False  # one of two instructions is not enough
    out = tmp_path / "examples.json"
    assert main(["--sft", tiny_model_dir, "--dpo", tiny_model_dir, "--data", str(data), "--judge", "verify",
                 "--seeds", "2", "--min_pass", "1", "--output", str(out)]) == 0
    info = json.loads(out.read_text())
    assert info["measured"]["judge"] == "minidpo.verify (strict)" and info["measured"]["candidates"] == 2
    assert sorted(m["axis"] for m in info["all"]) == ["change_case", "punctuation"]
    # the same model on both sides answers alike, so no prompt shows DPO doing better
    assert all(m["dpo_pass"] == m["sft_pass"] for m in info["all"]) and info["examples"] == []
