"""Resumable DeepSpeed checkpoints and Hugging Face exports.

Layout inside a run folder:
    checkpoints/latest                 tag of the newest complete checkpoint (written last, atomically)
    checkpoints/step_00000100/         DeepSpeed model + optimizer + scheduler states, one RNG file per rank
    checkpoints/step_00000100/minidpo.json  step and resume fingerprint (below)
    checkpoints/step_00000100/reference.pt  TR-DPO only: the synced reference's parameters (or twin adapter)
    checkpoints/step_00000100/hf/      Hugging Face export of that step (save_pretrained + tokenizer)
    export/                            the final Hugging Face export

A checkpoint or export is written into `<name>.partial` and renamed when complete, so a kill during a
save leaves the previous one intact; a resume removes the leftovers with a line saying so. A resume also
checks the fingerprint: what the run config's sections say a resumed run must share with the saved one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil

import torch
import torch.distributed as dist

from minidpo import lora
from minidpo.errors import ConfigError, FaultError
from minidpo.fault_injection import inject
from minidpo.fsutil import PARTIAL, clean_incomplete, commit_folder, write_text_atomic

TAG_RE = re.compile(r"^step_(\d+)$")
REFERENCE_FILE = "reference.pt"


def checkpoints_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def step_tag(step: int) -> str:
    return f"step_{step:08d}"


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def export_hf(engine, tokenizer, out_dir: str) -> None:
    """Write a folder that `AutoModelForCausalLM.from_pretrained` loads. Collective under ZeRO-3."""
    state_dict = None
    if engine.zero_optimization_stage() == 3:
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # gathers the partitions on rank 0
    if dist.get_rank() == 0:
        partial = out_dir.rstrip("/") + PARTIAL  # renamed once complete: a killed export leaves the old one
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        if lora.is_lora(engine):  # the adapter, and the base with it merged in
            lora.export(engine, tokenizer, partial, state_dict)
        else:
            engine.module.save_pretrained(partial, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(partial)
        commit_folder(partial, out_dir)
    dist.barrier()


def save(engine, tokenizer, output_dir: str, step: int, client_state: dict, *, keep: int, export: bool,
         rank_state: dict | None = None, meta: dict | None = None, reference=None) -> str:
    """Checkpoint (and export) at optimizer step `step`; keep only the newest `keep` checkpoints.
    Written into `<tag>.partial`, renamed, then `latest` is replaced: a kill at any point leaves the
    previous checkpoint named by `latest`. rank_state: this rank's extra state (e.g. metric sums);
    meta: JSON written by rank 0 (the resume fingerprint); reference: TR-DPO's ReferenceSync, whose
    synced reference is saved too (it cannot be recomputed from the policy)."""
    root = checkpoints_dir(output_dir)
    tag = step_tag(step)
    partial = tag + PARTIAL
    previous = latest_tag(output_dir)
    try:
        if dist.get_rank() == 0:
            shutil.rmtree(os.path.join(root, partial), ignore_errors=True)
        dist.barrier()
        engine.save_checkpoint(root, tag=partial, client_state=client_state, save_latest=False)
        torch.save({**_rng_state(), "rank_state": rank_state or {}},
                   os.path.join(root, partial, f"rng_rank{dist.get_rank()}.pt"))
        if reference is not None:
            state = reference.state_dict()  # collective under ZeRO-3
            if dist.get_rank() == 0:
                torch.save(state, os.path.join(root, partial, REFERENCE_FILE))
        if export:
            export_hf(engine, tokenizer, os.path.join(root, partial, "hf"))
        inject("save", step, os.path.join(root, partial))
        dist.barrier()
        if dist.get_rank() == 0:
            write_text_atomic(os.path.join(root, partial, "minidpo.json"),
                                     json.dumps({"step": step, **(meta or {})}, indent=2))
            commit_folder(os.path.join(root, partial), os.path.join(root, tag))
            write_text_atomic(os.path.join(root, "latest"), tag)
    except OSError as e:
        raise save_failed(e.filename or os.path.join(root, partial), e,
                                 previous and os.path.join(root, previous)) from e
    dist.barrier()
    if dist.get_rank() == 0:
        tags = sorted((t for t in os.listdir(root) if TAG_RE.match(t)), key=lambda t: int(TAG_RE.match(t)[1]))
        for old in tags[:-keep]:
            shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    dist.barrier()
    return os.path.join(root, tag)


def latest_tag(output_dir: str) -> str | None:
    path = os.path.join(checkpoints_dir(output_dir), "latest")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


def latest_path(output_dir: str) -> str | None:
    tag = latest_tag(output_dir)
    return tag and os.path.join(checkpoints_dir(output_dir), tag)


def check_resume(cfg, fingerprint: dict, log) -> bool:
    """--resume, before any heavy work: remove what a killed save left, refuse a checkpoint made with
    other settings (unless --resume_allow_changes names them). False, with a line, when no complete
    checkpoint exists yet (the run was killed before its first save): the run starts from step 0."""
    root = checkpoints_dir(cfg.output_dir)
    if dist.get_rank() == 0:
        clean_incomplete(root, log)
        clean_incomplete(cfg.output_dir, log)  # export.partial
    dist.barrier()
    path = latest_path(cfg.output_dir)
    if path is None:
        log(f"minidpo: --resume: no complete checkpoint in {root} yet: starting from step 0")
        return False
    meta = checkpoint_meta(cfg.output_dir) or {}
    changes = check_fingerprint(meta.get("fingerprint"), fingerprint, cfg.resume_allow_changes, path)
    if changes:
        log(f"minidpo: resuming {path} with changed settings (allowed): {'; '.join(changes)}")
    return True


def checkpoint_meta(output_dir: str) -> dict | None:
    """minidpo.json of the latest checkpoint (None: no checkpoint, or one from before it existed)."""
    tag = latest_tag(output_dir)
    path = tag and os.path.join(checkpoints_dir(output_dir), tag, "minidpo.json")
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def resume(engine, output_dir: str, reference=None) -> dict:
    """Load the latest checkpoint into the engine (and TR-DPO's synced reference into `reference`, a
    ReferenceSync, when the checkpoint has one); returns the client state saved with it, plus this
    rank's `rank_state`. DeepSpeed reads its own files with torch.load(weights_only=False) (0.19 has no
    switch): they are trusted because this run wrote them; our RNG file is read with weights_only=True."""
    tag = latest_tag(output_dir)
    if tag is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {checkpoints_dir(output_dir)} (no 'latest' file)")
    load_path, client_state = engine.load_checkpoint(checkpoints_dir(output_dir), tag=tag)
    if load_path is None:
        raise FileNotFoundError(f"--resume: DeepSpeed could not load checkpoint {tag} in {checkpoints_dir(output_dir)}")
    rng_file = os.path.join(checkpoints_dir(output_dir), tag, f"rng_rank{dist.get_rank()}.pt")
    if os.path.isfile(rng_file):
        state = torch.load(rng_file, weights_only=True)
        _set_rng_state(state)
        client_state = {**client_state, "rank_state": state.get("rank_state", {})}
    reference_file = os.path.join(checkpoints_dir(output_dir), tag, REFERENCE_FILE)
    if reference is not None and os.path.isfile(reference_file):
        reference.load_state_dict(torch.load(reference_file, map_location="cpu", weights_only=True))
    return client_state


def save_failed(path: str, error: OSError, previous: str | None) -> FaultError:
    what = error.strerror or str(error)
    intact = f"; the previous checkpoint {previous} is intact" if previous else "; no earlier checkpoint exists"
    return FaultError(f"cannot save the checkpoint to {path}: {what} (free space or fix permissions, then "
                      f"resume with --resume true){intact}")


# --- resume fingerprint ------------------------------------------------------------------------------

def content_hash(path: str | None) -> str | None:
    """sha256 of a file's bytes, or of a folder's relative file names and bytes; of each part's, for a
    comma-separated --data list (minidpo.data.files.data_files)."""
    if path is None:
        return None
    if "," in path and not os.path.exists(path):
        parts = [content_hash(part.strip()) or "" for part in path.split(",") if part.strip()]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, names in os.walk(path) for f in names)
    for name in files:
        h.update(os.path.relpath(name, path).encode() + b"\0")
        with open(name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def fingerprint_keys(config_cls) -> list[str]:
    """The settings a resumed run must share, from the config's sections (minidpo.config: "resume")."""
    names = dict.fromkeys(n for section in config_cls.sections() for n in section.__dataclass_fields__)
    keys = [n for n in names if config_cls.resume_rule(n) != "free"]
    content = [n for n in keys if config_cls.resume_rule(n) == "content"]
    return [*content, "world_size", *(n for n in keys if n not in content)]


def fingerprint(cfg, world_size: int) -> dict:
    """What a resumed run must share with the run that saved the checkpoint: the bytes of its data and
    models, the world size, and every setting whose section says it must stay the same."""
    fp = {"world_size": world_size}
    for name in fingerprint_keys(type(cfg)):
        if name == "world_size":
            continue
        value = getattr(cfg, name)
        fp[name] = (content_hash(value) if value else None) if type(cfg).resume_rule(name) == "content" else value
    return json.loads(json.dumps(fp))  # tuples -> lists, as read back from JSON


def allowed_changes(text: str, keys: list[str]) -> set[str]:
    names = {n.strip() for n in text.split(",") if n.strip()}
    if "all" in names:
        return set(keys)
    unknown = sorted(names - set(keys))
    if unknown:
        raise ConfigError(f"--resume_allow_changes: unknown name(s) {', '.join(unknown)}; "
                          f"choose from all, {', '.join(keys)}")
    return names


def check_fingerprint(saved: dict | None, current: dict, allow: str, where: str) -> list[str]:
    """Raise ConfigError naming every difference not allowed; returns the allowed ones (for a log line)."""
    if saved is None:
        return []
    keys = list(current)
    allowed = allowed_changes(allow, keys)
    diffs = [k for k in keys if k in saved and saved[k] != current.get(k)]

    def show(k):
        label = f"{k} content" if k in ("data", "model", "ref_model") else k
        return f"{label} ({saved[k]} -> {current.get(k)})"
    refused = [k for k in diffs if k not in allowed]
    if refused:
        raise ConfigError(f"--resume: {where} was saved with other settings: {'; '.join(show(k) for k in refused)}. "
                          f"If intended, pass --resume_allow_changes {','.join(refused)}")
    return [show(k) for k in diffs]
