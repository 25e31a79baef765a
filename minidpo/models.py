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
  fp32 on a CPU. Names as in the run config (bf16 | fp16 | fp32).
- one loading rule for every reader (trainer, eval, app): safetensors weights, or a folder whose weights
  are only a pickle (`pytorch_model.bin`) when the caller allows it (--allow_pickle_weights).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from minidpo.config import DTYPES as DTYPE_NAMES
from minidpo.config import LossSettings
from minidpo.data import ChatEncoder
from minidpo.errors import ConfigError, ModelError, first_line
from minidpo.sources import hf_folder

DTYPES = dict(zip(DTYPE_NAMES, (torch.bfloat16, torch.float16, torch.float32)))
DTYPE_CHOICES = ("auto", *DTYPES)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
DEFAULT_BETA = LossSettings.beta  # the trainer's default
SAFE_WEIGHTS = (".safetensors", ".safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {name} asked for, but this torch sees no CUDA device")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
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
    try:  # cheap, and catches a broken folder before minutes of loading the other model's weights
        AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - turned into one line for people
        raise ModelError(f"could not load the {role} model from {path}: {first_line(exc)}") from exc
    return path


def load_tokenizer(path, role: str = "model"):
    """The tokenizer in `path` (local files only), with a pad token (its EOS when it has none)."""
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
    """EOS of the tokenizer (and of the model's configs) plus the chat template's end-of-turn token(s): the
    one after an answer and, when it differs, the one after a tool call (Llama 3.1's <|eom_id|>)."""
    ids: set[int] = set()
    for source in (tokenizer, getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update([eos] if isinstance(eos, int) else eos)
    # the end-of-turn token the trainer puts after every answer, and after a tool call when that is another
    ids.update(ChatEncoder(tokenizer).end_ids)
    return frozenset(int(i) for i in ids)


def refuse_pickle_only(path, allow: bool) -> None:
    """A folder whose weights exist only as a pickle (`pytorch_model.bin`) is refused: unpickling can run
    code. transformers reads it with torch.load(weights_only=True), which --allow_pickle_weights accepts."""
    if allow or not os.path.isdir(path):
        return
    names = os.listdir(path)
    if any(n.endswith(SAFE_WEIGHTS) for n in names):
        return
    if any(n in PICKLE_WEIGHTS or (n.startswith("pytorch_model-") and n.endswith(".bin")) for n in names):
        raise ConfigError(f"{path}: weights only as a pickle (pytorch_model.bin), which can run code when loaded; "
                          "convert it to safetensors, or pass --allow_pickle_weights true if you trust its source")


def load_weights(path, *, dtype: torch.dtype = torch.float32, role: str = "model", allow_pickle: bool = False):
    """The causal LM in the Hugging Face folder `path` (local files only), under the one loading rule."""
    refuse_pickle_only(path, allow_pickle)
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
               dtype: str = "auto", allow_pickle: bool = False) -> LoadedModel:
    """Resolve `source` to a Hugging Face folder, check it, and load model + tokenizer for inference.

    tokenizer: a tokenizer folder, for sources that carry none (a bare MiniMind .pth), or to use instead
    of a folder's own tokenizer files when it has none.
    """
    folder = check_model_folder(hf_folder(str(source), tokenizer=tokenizer, role=f"--{role.lower()}"), role,
                                tokenizer=tokenizer)
    tok_folder = folder if any((folder / n).is_file() for n in TOKENIZER_FILES) else Path(tokenizer)
    dev = pick_device(device)
    tok = load_tokenizer(tok_folder, role)
    model = load_weights(folder, dtype=pick_dtype(dtype, dev), role=role, allow_pickle=allow_pickle)
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


# --- the trainer's models --------------------------------------------------------------------------

def load_causal_lm(path: str, *, trainable: bool, activation_checkpointing: int = 0, allow_pickle: bool = False):
    """A local Hugging Face causal LM, loaded in float32 (DeepSpeed casts to the training precision).
    activation_checkpointing n > 0: every n-th decoder layer keeps only its input and recomputes the
    rest in the backward (n = 1: all layers, about a third more compute for much less activation memory)."""
    model = load_weights(path, dtype=torch.float32, allow_pickle=allow_pickle)
    model.config.use_cache = False
    if trainable:
        model.train()
        if activation_checkpointing:
            enable_activation_checkpointing(model, int(activation_checkpointing))
    return model


def enable_activation_checkpointing(model, every_n_layers: int) -> None:
    if not model.supports_gradient_checkpointing:
        raise ConfigError(f"--activation_checkpointing: {type(model).__name__} does not support it")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers)
    elif every_n_layers == 1:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ConfigError("--activation_checkpointing n > 1 needs a newer transformers; use 1 (every layer)")
