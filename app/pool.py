"""The app's pool of models: names -> model sources, loaded on first use, the least recently used evicted
when the loaded models would pass a memory budget.

    pool = Pool(pool_sources(["runs/sft/export", "runs/dpo"]), budget_bytes=8e9, device="cpu")
    lm = pool.get("dpo", keep=("sft",))   # loads it (evicting others but "sft" if needed), or returns it

A pool entry is any model source `minidpo.models.load_model` reads (Hugging Face folder, .gguf, MiniMind
.pth with --tokenizer, LoRA adapter folder). A folder that is none of these is a run folder: every
export in it joins the pool (`export*/`, `checkpoints/*/hf/`, `make iterate`'s `round_*/dpo/export`,
and the runs below it), each named by the shortest end of its path that tells it apart.
"""

from __future__ import annotations

import gc
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from minidpo.errors import ModelError
from minidpo.models import LoadedModel, load_model, pick_device, pick_dtype, same_vocab
from minidpo.sources import hf_folder

GENERIC_PARTS = ("export", "hf", "checkpoints")  # path parts that name no model
MODEL_MARKERS = ("config.json", "adapter_config.json")
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
SEARCH_DEPTH = 5  # runs/<run>/checkpoints/<step>/hf, runs/<iterate>/round_k/dpo/export


def is_model_source(path: Path) -> bool:
    return path.is_file() or any((path / m).is_file() for m in MODEL_MARKERS)


def run_exports(folder: Path) -> list[Path]:
    """The model folders in a run folder (exports, checkpoint exports, iterate rounds), sorted by path."""
    found, stack = [], [(folder, 0)]
    while stack:
        here, depth = stack.pop()
        for child in sorted(p for p in here.iterdir() if p.is_dir() and not p.name.endswith(".partial")):
            if is_model_source(child):
                found.append(child)
            elif depth + 1 < SEARCH_DEPTH:
                stack.append((child, depth + 1))
    return sorted(found)


def short_names(paths: list[str]) -> list[str]:
    """The shortest unique end of each path, without the parts that name no model (export, hf, ...); a
    checkpoint keeps its run's name (dpo/step_00000100)."""
    parts, least = [], []
    for p in paths:
        kept = [x for x in Path(p).with_suffix("").parts if x not in GENERIC_PARTS and x not in ("/", ".")]
        parts.append(kept or [Path(p).name])
        least.append(2 if "checkpoints" in Path(p).parts else 1)
    names = [None] * len(paths)
    for k in range(1, max(len(x) for x in parts) + 1):
        candidates = ["/".join(x[-max(k, m):]) for x, m in zip(parts, least)]
        for i, c in enumerate(candidates):
            if names[i] is None and (candidates.count(c) == 1 or k >= len(parts[i])):
                names[i] = c
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def pool_sources(items: list[str]) -> dict[str, str]:
    """name -> source for MODELS items: `path`, `name=path`, or a run folder (all of its exports)."""
    named: dict[str, str] = {}
    unnamed: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, sep, path = item.partition("=")
        if sep and name and not os.path.exists(item):
            named[name] = path
            continue
        p = Path(item)
        if not p.exists():
            raise ModelError(f"--models {item}: no such file or folder")
        if p.is_dir() and not is_model_source(p):
            exports = run_exports(p)
            if not exports:
                raise ModelError(f"--models {item}: a folder with no model in it (no config.json, no export)")
            unnamed += [str(e) for e in exports]
        else:
            unnamed.append(item)
    taken = set(named)
    for name, path in zip(short_names(unnamed), unnamed):
        if path not in named.values():
            named[name if name not in taken else path] = path
    return named


def newest(sources: dict[str, str]) -> str:
    """The name whose model was written last (its config.json, else the file)."""
    def stamp(name):
        p = Path(sources[name])
        marker = next((p / m for m in MODEL_MARKERS if (p / m).is_file()), p)
        return marker.stat().st_mtime if marker.exists() else 0.0
    return max(sources, key=stamp)


def model_bytes(lm: LoadedModel) -> int:
    m = lm.model
    return sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))


def estimate_bytes(folder: str, dtype: torch.dtype) -> int:
    """Memory a folder's weights take once loaded as `dtype`: the weight files' size, rescaled from the
    dtype they were saved in (config.json's torch_dtype / dtype)."""
    files = [f for f in Path(folder).iterdir() if f.suffix in (".safetensors", ".bin")]
    stored = sum(f.stat().st_size for f in files)
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        saved = BYTES.get(str(cfg.get("torch_dtype") or cfg.get("dtype")), 4)
    except (OSError, ValueError):
        saved = 4
    return int(stored * torch.empty((), dtype=dtype).element_size() / saved)


class Pool:
    """Named model sources; `get` loads lazily and evicts the least recently used beyond `budget_bytes`
    (0: no limit). Models passed in `loaded` are in the pool already (a caller that loaded them)."""

    def __init__(self, sources: dict[str, str], *, budget_bytes: float = 0, device: str = "auto",
                 dtype: str = "auto", tokenizer: str | None = None, allow_pickle: bool = False,
                 loaded: dict[str, LoadedModel] | None = None):
        if len(sources) < 2:
            raise ModelError(f"the pool needs at least two models, got {len(sources)}: {', '.join(sources) or 'none'}")
        self.sources = dict(sources)
        self.budget = int(budget_bytes)
        self.load_args = dict(tokenizer=tokenizer, device=device, dtype=dtype, allow_pickle=allow_pickle)
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict(loaded or {})
        self._sizes = {name: model_bytes(lm) for name, lm in self._loaded.items()}
        self._same_vocab: dict[frozenset, bool] = {}
        self._lock = threading.Lock()  # two browser tabs may ask for models at once
        self.evictions = 0

    @property
    def names(self) -> list[str]:
        return list(self.sources)

    @property
    def loaded(self) -> list[str]:
        """Loaded names, least recently used first."""
        return list(self._loaded)

    def loaded_bytes(self) -> int:
        return sum(self._sizes[n] for n in self._loaded)

    def get(self, name: str, keep=()) -> LoadedModel:
        """The loaded model `name`; loading it first evicts the least recently used models (never those
        in `keep`) until it fits the budget."""
        if name not in self.sources:
            raise ModelError(f"no model named {name!r} in the pool ({', '.join(self.sources)})")
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            folder = hf_folder(self.sources[name], tokenizer=self.load_args["tokenizer"], role=f"--models {name}")
            dtype = pick_dtype(self.load_args["dtype"], pick_device(self.load_args["device"]))
            self._make_room(estimate_bytes(folder, dtype) if Path(folder).is_dir() else 0, keep={name, *keep})
            lm = load_model(folder, name, **self.load_args)
            self._loaded[name], self._sizes[name] = lm, model_bytes(lm)
            self._make_room(0, keep={name, *keep})  # the estimate may have been low
            return lm

    def _make_room(self, needed: int, keep: set) -> None:
        if not self.budget:
            return
        before = self.evictions
        for victim in [n for n in self._loaded if n not in keep]:
            if self.loaded_bytes() + needed <= self.budget:
                break
            del self._loaded[victim]
            self.evictions += 1
        if self.evictions > before:  # give the memory back now, before the next model is loaded
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def shared_tokenizer(self, a: str, b: str) -> bool:
        """Whether two pool models map every token to the same id (checked once per pair)."""
        key = frozenset((a, b))
        if key not in self._same_vocab:
            self._same_vocab[key] = same_vocab(self.get(a, keep=(b,)).tokenizer, self.get(b, keep=(a,)).tokenizer)
        return self._same_vocab[key]


def default_budget_bytes(device: str = "auto") -> int:
    """Half of the machine's memory (of the GPU's on CUDA): room for a pair and a few more small models."""
    dev = pick_device(device)
    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev).total_memory * 0.5)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)
    except (ValueError, OSError):
        return 0
