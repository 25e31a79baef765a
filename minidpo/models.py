"""Load and check a finished model for inference, once, for every consumer (eval, the app, scoring, the engine).

    lm = load_model("runs/dpo/export", "DPO", device="auto", dtype="auto")
    lm.model, lm.tokenizer, lm.stop_ids, lm.pad_id, lm.device, lm.dtype, lm.max_positions

Any model source goes through `minidpo.sources.hf_folder` first (a Hugging Face folder as it is; a
.gguf file, and the other kinds as they land, converted once into a cached folder), so everything
below sees a Hugging Face folder. Problems are `ModelError`s: one line naming the role and the path.

- stop ids: the tokenizer's and the model's EOS plus the chat template's end-of-turn token (the token
  the trainer puts after every answer; ChatML: <|im_end|>). A template whose end-of-turn is not EOS
  still stops sampling where training taught the model to stop.
- pad id: the tokenizer's pad token, else its EOS (padding is always masked, any id will do).
- device "auto": CUDA when torch sees one, else CPU; dtype "auto": bf16 (fp16 without bf16) on a GPU,
  fp32 on a CPU. Names as in the run config (bf16 | fp16 | fp32); the app's old float32 / bfloat16 /
  float16 are accepted for one release.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from minidpo.config import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_CHOICES = ("auto", *DTYPES)
OLD_DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}  # the app's spellings before 0.2
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
DEFAULT_BETA = 0.1  # the trainer's default (RunConfig.beta)


class ModelError(ConfigError):
    """A model cannot be used for inference; the message names the role, the path and what to do."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {name} asked for, but this torch sees no CUDA device")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    name = OLD_DTYPE_NAMES.get(name, name)
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise ModelError(f"--dtype {name}: choose one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[name]


def check_model_folder(path, role: str = "model", *, tokenizer: str | None = None) -> Path:
    """Fail early, in one line, on a folder that cannot be a Hugging Face causal-LM export."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{role} model folder not found: {path}")
    if not path.is_dir():
        raise ModelError(f"{role} model path is not a folder: {path}")
    if not (path / "config.json").is_file():
        raise ModelError(f"{role} model folder {path} has no config.json (is it a Hugging Face export?)")
    if tokenizer is None and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"{role} model folder {path} has no tokenizer files (tokenizer.json); pass --tokenizer DIR")
    from transformers import AutoConfig

    try:  # cheap, and catches a broken folder before minutes of loading the other model's weights
        AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - turned into one line for people
        raise ModelError(f"could not load the {role} model from {path}: {first_line(exc)}") from exc
    return path


def load_tokenizer(path, role: str = "model"):
    """The tokenizer in `path` (local files only), with a pad token (its EOS when it has none)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - turned into one line for people
        raise ModelError(f"could not load the {role} tokenizer from {path}: {first_line(exc)}") from exc
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # padding is masked out everywhere; any id will do
    return tok


def pad_id(tokenizer) -> int:
    """The id to pad with: the pad token, else EOS."""
    tid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise ModelError("the tokenizer has neither a pad nor an EOS token: set tokenizer.pad_token")
    return int(tid)


def stop_ids(tokenizer, model=None) -> frozenset[int]:
    """EOS of the tokenizer (and of the model's configs) plus the chat template's end-of-turn token."""
    from minidpo.data import ChatEncoder

    ids: set[int] = set()
    for source in (tokenizer, getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update([eos] if isinstance(eos, int) else eos)
    end = ChatEncoder(tokenizer).end_id  # the end-of-turn token the trainer puts after every answer
    if end is not None:
        ids.add(int(end))
    return frozenset(int(i) for i in ids)


def load_weights(path, *, dtype: torch.dtype = torch.float32, role: str = "model"):
    """The causal LM in the Hugging Face folder `path` (local files only)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - turned into one line for people
        raise ModelError(f"could not load the {role} model from {path}: {first_line(exc)}") from exc


@dataclass
class LoadedModel:
    """A model ready for inference: eval mode, on its device, with what sampling and scoring need."""

    role: str  # "SFT", "DPO", "model", ...
    path: str  # the Hugging Face folder it was loaded from
    model: object
    tokenizer: object
    stop_ids: frozenset[int]
    pad_id: int
    max_positions: int | None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def load_model(source, role: str = "model", *, tokenizer: str | None = None, device: str = "auto",
               dtype: str = "auto") -> LoadedModel:
    """Resolve `source` to a Hugging Face folder, check it, and load model + tokenizer for inference.

    tokenizer: a tokenizer folder, for sources that carry none (a bare MiniMind .pth), or to use instead
    of a folder's own tokenizer files when it has none.
    """
    from minidpo.sources import hf_folder

    folder = check_model_folder(hf_folder(str(source), tokenizer=tokenizer, role=f"--{role.lower()}"), role,
                                tokenizer=tokenizer)
    tok_folder = folder if any((folder / n).is_file() for n in TOKENIZER_FILES) else Path(tokenizer)
    dev = pick_device(device)
    tok = load_tokenizer(tok_folder, role)
    model = load_weights(folder, dtype=pick_dtype(dtype, dev), role=role)
    model.to(dev).eval()
    try:
        stops = stop_ids(tok, model)
    except ValueError as exc:
        raise ModelError(f"{role} tokenizer in {tok_folder} is unusable: {exc}") from exc
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is None and 0 < getattr(tok, "model_max_length", 0) < 1_000_000:
        limit = tok.model_max_length
    return LoadedModel(role, str(folder), model, tok, stops, pad_id(tok), limit)


def same_vocab(a, b) -> bool:
    """Two tokenizers that map every token to the same id (a DPO model and the SFT model it came from)."""
    return a.get_vocab() == b.get_vocab()


def trained_beta(dpo_dir, default: float = DEFAULT_BETA) -> float:
    """The beta a DPO export was trained with (see `resolve_beta`), else `default`."""
    beta, _ = resolve_beta(None, dpo_dir, default=default)
    return beta


def resolve_beta(flag: float | None, dpo_dir, *, default: float = DEFAULT_BETA) -> tuple[float, str]:
    """(beta, where it came from): the flag when given; else `run_config.json` of the DPO run (the
    export's parent, or the folder itself, as the trainer writes them); else the trainer's default."""
    if flag is not None:
        if not flag > 0:
            raise ModelError(f"--beta must be > 0, got {flag}")
        return float(flag), "--beta"
    for path in (Path(dpo_dir).parent / "run_config.json", Path(dpo_dir) / "run_config.json"):
        try:
            beta = json.loads(path.read_text(encoding="utf-8"))["run"]["beta"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(beta, (int, float)) and beta > 0:
            return float(beta), str(path)
    return default, f"default {default:g} (no run_config.json next to {dpo_dir})"
