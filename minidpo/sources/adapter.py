"""A PEFT LoRA adapter folder as a model source: merged onto its base once, into a cached folder.

    merged_folder("runs/lora/export/adapter", base)  # -> ".cache/minidpo/lora/adapter-<key>"

An adapter folder holds `adapter_config.json` (which names its base model) and the low-rank weights.
`minidpo.sources.hf_folder` finds the base (`resolve_base`), turns it into a Hugging Face folder (the
base may itself be a source to convert: a .gguf or MiniMind file) and merges the adapter onto it here.
The training side of LoRA (the adapter on the policy engine, its export) is `minidpo.lora`, which reads
adapters and checks their base with the functions below.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os

import torch
from huggingface_hub import snapshot_download
from transformers import AutoModelForCausalLM, AutoTokenizer

from minidpo import fsutil
from minidpo.errors import ConfigError, SourceError, first_line

CONFIG_FILE = "adapter_config.json"
CACHE_DIR = fsutil.cache_dir("lora")
# config.json keys that say how a folder was saved, not which model it is
_METADATA = ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache")


def is_adapter_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILE))


def read_adapter_config(path: str, setting: str) -> dict:
    """The adapter's adapter_config.json; `setting` names it in messages ("--lora_adapter", "--model")."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise ConfigError(f"{setting} {path}: no adapter_config.json, not a PEFT adapter folder")
    with open(file) as f:
        config = json.load(f)
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ConfigError(f"{setting} {path}: a {config.get('peft_type')} adapter; only LoRA adapters are supported")
    return config


def merge_adapter(adapter_dir: str, base_dir: str, out_dir: str, *, dtype=torch.float32) -> None:
    """Load the base, apply the adapter with PEFT, merge it into the weights and save a plain HF folder."""
    from peft import PeftModel  # heavy: imported only where an adapter is merged

    with torch.random.fork_rng(devices=[]):  # PEFT initialises the layers it then loads: keep the run's RNG
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True)
        merged = PeftModel.from_pretrained(base, adapter_dir, autocast_adapter_dtype=False).merge_and_unload()
    merged.to(dtype).save_pretrained(out_dir, safe_serialization=True)


# --- the base model an adapter was trained on ---------------------------------------------------
def _same_model_folder(a: str, b: str) -> bool:
    """The same folder, or a copy: equal configs (metadata aside) and byte-equal weight files."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        configs = []
        for folder in (a, b):
            with open(os.path.join(folder, "config.json")) as f:
                configs.append(json.load(f))
    except OSError:
        return False
    a_config, b_config = ({k: v for k, v in c.items() if k not in _METADATA} for c in configs)
    if a_config != b_config:
        return False
    weights = sorted(f for f in os.listdir(a) if f.endswith((".safetensors", ".bin")))
    return weights == sorted(f for f in os.listdir(b) if f.endswith((".safetensors", ".bin"))) and all(
        filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False) for f in weights)


def check_same_base(recorded: str | None, model: str, where: str) -> None:
    """An adapter trained on another base is an error. A base recorded as a local folder must be
    --model (or a copy); a hub id that is not on this machine is checked by the shapes when loading."""
    if recorded and os.path.isdir(recorded) and not _same_model_folder(recorded, model):
        raise ConfigError(f"{where}: an adapter for base model {recorded}, not for --model {model}")


def resolve_base(adapter_dir: str, role: str) -> str:
    """The adapter's base model as recorded, found offline: a local path (a folder or a model source
    `hf_folder` converts) or a hub id's folder in the local Hugging Face cache."""
    base = read_adapter_config(adapter_dir, role).get("base_model_name_or_path")
    if not base:
        raise SourceError(f"{role} {adapter_dir}: adapter_config.json names no base_model_name_or_path")
    if os.path.exists(base):
        return base
    try:
        return snapshot_download(base, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - not in the local cache: one line, what to do
        raise SourceError(f"{role} {adapter_dir}: its base model {base!r} is not on this machine "
                          "(edit base_model_name_or_path in adapter_config.json to a local folder)") from e


def merged_folder(adapter_dir: str, base: str, role: str = "--model", cache_dir: str | None = None) -> str:
    """A cached HF folder with the adapter merged onto `base` (a Hugging Face folder), made once; keyed
    on the adapter's and the base's files."""
    h = hashlib.sha256(b"v1")
    for folder in (adapter_dir, base):
        h.update(os.path.abspath(folder).encode())
        for name in sorted(os.listdir(folder)):
            st = os.stat(os.path.join(folder, name))
            h.update(f"|{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    out = os.path.join(cache_dir or CACHE_DIR, f"{os.path.basename(os.path.normpath(adapter_dir))}-{h.hexdigest()[:16]}")

    def write(tmp: str) -> None:
        try:
            merge_adapter(adapter_dir, base, tmp)
        except (RuntimeError, ValueError, KeyError) as e:
            raise SourceError(f"{role} {adapter_dir}: does not fit its base {base}: {first_line(e)}") from e
        has_tokenizer = os.path.isfile(os.path.join(adapter_dir, "tokenizer_config.json"))
        AutoTokenizer.from_pretrained(adapter_dir if has_tokenizer else base, local_files_only=True).save_pretrained(tmp)

    return fsutil.cached_build(out, write, marker="config.json")
