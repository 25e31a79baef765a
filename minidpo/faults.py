"""Reliability: stop requests (SIGTERM / Ctrl-C), non-finite steps, resume fingerprints, atomic writes,
safe loading, peer failures, and a fault-injection hook for the tests.

The trainer calls these with a few lines each; nothing here knows the DPO math.

Fault injection (tests only): MINIDPO_FAULT="action@point:step[+][:rankN],..." makes this process do
`action` when it reaches `point` at optimizer step `step` (`+`: that step and every later one), e.g.
`kill@step:3` (SIGKILL after step 3), `kill@save:4` (SIGKILL inside the save of step 4, after the
files were written, before they are committed), `nan@loss:3+` (the loss of steps >= 3 is NaN),
`term@step:2`, `int2@step:2` (two Ctrl-C), `stop@step:2` (SIGSTOP: a frozen rank), `enospc@save:4`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from minidpo.config import ConfigError

PARTIAL = ".partial"  # suffix of a folder being written; renamed to its final name once complete


class FaultError(RuntimeError):
    """A run stopped for a reason the user must act on (non-finite steps, a failed save, a lost rank)."""


# --- fault injection (tests) -------------------------------------------------------------------------

def _planned_faults() -> list[tuple[str, str, int, bool, int | None]]:
    spec = os.environ.get("MINIDPO_FAULT", "")
    faults = []
    for item in filter(None, spec.split(",")):
        action, _, where = item.partition("@")
        point, step, *rank = where.split(":")
        onward = step.endswith("+")
        faults.append((action, point, int(step.rstrip("+")), onward, int(rank[0][4:]) if rank else None))
    return faults


def inject(point: str, step: int, path: str = "") -> str | None:
    """Do what MINIDPO_FAULT plans for (point, step) on this rank; returns the action (for `nan`)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    for action, where, at, onward, only_rank in _planned_faults():
        if where != point or (step != at and not (onward and step > at)) or only_rank not in (None, rank):
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        elif action == "term":
            os.kill(os.getpid(), signal.SIGTERM)
        elif action == "int2":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.5)  # a person's second Ctrl-C, not a launcher's echo of the first
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return action
    return None


# --- stop requests -----------------------------------------------------------------------------------

class StopRequest:
    """SIGTERM / SIGINT ask the run to stop after the current optimizer step (with a checkpoint); a
    second signal aborts at once. `agreed()` is collective: every rank learns that some rank was asked,
    so all stop at the same step."""

    def __init__(self):
        self.signal_name: str | None = None
        self._first_at = 0.0
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame):
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            # A launcher forwards the terminal's Ctrl-C as a signal of its own (deepspeed: SIGTERM,
            # torchrun: the same one) within milliseconds: only a later, second SIGINT is a person.
            if signum == signal.SIGINT and time.monotonic() - self._first_at > 1.0:
                print(f"minidpo: second {name}: aborting now, without a checkpoint", file=sys.stderr, flush=True)
                os._exit(130)
            return
        self.signal_name, self._first_at = name, time.monotonic()
        print(f"minidpo: {name} received: stopping after this optimizer step with a checkpoint "
              "(send it again to abort at once)", file=sys.stderr, flush=True)

    def agreed(self, step_flags: torch.Tensor | None = None) -> bool:
        flag = torch.tensor([1.0 if self.signal_name else 0.0])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signal_name is None:
            self.signal_name = "a signal on another rank"
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()


def resume_hint(output_dir: str) -> str:
    return ("minidpo: to continue, run the same command again with --resume true "
            f"(output_dir {output_dir})")


# --- non-finite steps --------------------------------------------------------------------------------

def _plain_torch_optimizer(engine) -> bool:
    """ZeRO-1/2/3 and the bf16/fp16 wrappers detect a non-finite gradient themselves and skip the
    update (weights, Adam moments and lr schedule untouched; engine.skipped_steps += 1). Only ZeRO-0
    in fp32 hands the gradients straight to torch's AdamW, which would write NaN into the weights."""
    return not hasattr(engine.optimizer, "overflow")


class NonFiniteGuard:
    """Counts optimizer steps whose update was skipped (non-finite loss or gradient, fp16 overflow) and
    stops the run after `max_in_a_row` of them in a row (0: never)."""

    def __init__(self, engine, max_in_a_row: int):
        self.engine = engine
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self._engine_skips = engine.skipped_steps

    def step(self) -> None:
        """engine.step(); at an accumulation boundary with a non-finite gradient, no update."""
        engine = self.engine
        if _plain_torch_optimizer(engine) and engine.is_gradient_accumulation_boundary() and not _grads_finite(engine):
            _skip_plain_step(engine)
        else:
            engine.step()

    def after_step(self, step: int, last_good_checkpoint: str | None) -> bool:
        """True if the step just taken was skipped; raises after too many in a row."""
        skipped = self.engine.skipped_steps > self._engine_skips
        self._engine_skips = self.engine.skipped_steps
        if not skipped:
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        if self.max_in_a_row and self.in_a_row >= self.max_in_a_row:
            where = f"; the last checkpoint is {last_good_checkpoint}" if last_good_checkpoint else ""
            raise FaultError(
                f"step {step}: {self.in_a_row} optimizer steps in a row had a non-finite loss or gradient norm and "
                f"were skipped (--max_skipped_steps {self.max_in_a_row}). Likely causes: a learning rate too high, "
                "fp16 overflow (use bf16), a pair whose log-probs underflow (very long answers with "
                f"--logps_reduction sum), or a bad checkpoint/model{where}")
        return True


def _grads_finite(engine) -> bool:
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]).sum()))


def _skip_plain_step(engine) -> None:
    """Run engine.step() with torch's optimizer step replaced by nothing and flagged as an overflow, so
    the engine's own bookkeeping (zero grads, no lr step, skipped_steps) is the one DeepSpeed does for
    an fp16 overflow."""
    opt = engine.optimizer
    opt.step, opt.overflow = (lambda *a, **k: None), True
    try:
        engine.step()
    finally:
        del opt.step, opt.overflow


def poison_loss(loss: torch.Tensor, step: int) -> torch.Tensor:
    """The `nan@loss:N` test hook: the loss of optimizer step N (1-based) becomes NaN."""
    return loss * float("nan") if inject("loss", step) == "nan" else loss


# --- resume fingerprint ------------------------------------------------------------------------------

FINGERPRINT_SETTINGS = ("batch_size", "grad_accum", "loss_type", "beta", "label_smoothing", "rpo_alpha",
                        "logps_reduction", "max_length", "max_prompt_length", "seed", "dtype", "epochs",
                        "max_steps", "learning_rate", "warmup_steps", "min_lr_ratio", "weight_decay",
                        "group_by_length", "shared_prompt", "loss_weights", "simpo_gamma", "discopop_tau",
                        "max_tokens_per_batch", "chat_template", "data_format", "lora_r", "lora_alpha",
                        "lora_dropout", "lora_target_modules", "lora_adapter")
FINGERPRINT_KEYS = ("data", "model", "ref_model", "world_size", *FINGERPRINT_SETTINGS)


def content_hash(path: str | None) -> str | None:
    """sha256 of a file's bytes, or of a folder's relative file names and bytes."""
    if path is None:
        return None
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, names in os.walk(path) for f in names)
    for name in files:
        h.update(os.path.relpath(name, path).encode() + b"\0")
        with open(name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def fingerprint(cfg, world_size: int) -> dict:
    """What a resumed run must share with the run that saved the checkpoint."""
    fp = {"data": content_hash(cfg.data), "model": content_hash(cfg.model),
          "ref_model": content_hash(cfg.ref_model) if cfg.ref_model else None, "world_size": world_size}
    fp.update({k: getattr(cfg, k) for k in FINGERPRINT_SETTINGS})
    return json.loads(json.dumps(fp))  # tuples -> lists, as read back from JSON


def allowed_changes(text: str) -> set[str]:
    names = {n.strip() for n in text.split(",") if n.strip()}
    if "all" in names:
        return set(FINGERPRINT_KEYS)
    unknown = sorted(names - set(FINGERPRINT_KEYS))
    if unknown:
        raise ConfigError(f"--resume_allow_changes: unknown name(s) {', '.join(unknown)}; "
                          f"choose from all, {', '.join(FINGERPRINT_KEYS)}")
    return names


def check_fingerprint(saved: dict | None, current: dict, allow: str, where: str) -> list[str]:
    """Raise ConfigError naming every difference not allowed; returns the allowed ones (for a log line)."""
    if saved is None:
        return []
    allowed = allowed_changes(allow)
    diffs = [k for k in FINGERPRINT_KEYS if k in saved and saved[k] != current.get(k)]
    def show(k):
        label = f"{k} content" if k in ("data", "model", "ref_model") else k
        return f"{label} ({saved[k]} -> {current.get(k)})"
    refused = [k for k in diffs if k not in allowed]
    if refused:
        raise ConfigError(f"--resume: {where} was saved with other settings: {'; '.join(show(k) for k in refused)}. "
                          f"If intended, pass --resume_allow_changes {','.join(refused)}")
    return [show(k) for k in diffs]


# --- atomic writes -----------------------------------------------------------------------------------

def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """Flush every file under `path` to disk (a kill -9 loses nothing written; a power loss could)."""
    for folder, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(folder)


def write_text_atomic(path: str, text: str) -> None:
    """Write a temp file, fsync, rename over `path`: a reader sees the old text or the new, never half."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def commit_folder(partial: str, final: str) -> None:
    """Replace `final` by the complete folder `partial` (a rename: atomic on one file system). An old
    `final` is moved aside first and deleted after, so a crash leaves one complete folder or the other."""
    fsync_tree(partial)  # on disk before it is named complete (a power loss, not only a kill)
    old = final + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(partial, final)
    fsync_dir(os.path.dirname(final) or ".")
    shutil.rmtree(old, ignore_errors=True)


def clean_incomplete(folder: str, log=print) -> None:
    """Remove folders a killed save left behind (`*.partial`, `*.old`), with a line each."""
    if not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder)):
        if name.endswith((PARTIAL, ".old")) and os.path.isdir(os.path.join(folder, name)):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
            log(f"minidpo: removed {os.path.join(folder, name)}: an incomplete save (the run was killed or failed while writing it)")


def save_failed(path: str, error: OSError, previous: str | None) -> FaultError:
    what = error.strerror or str(error)
    intact = f"; the previous checkpoint {previous} is intact" if previous else "; no earlier checkpoint exists"
    return FaultError(f"cannot save the checkpoint to {path}: {what} (free space or fix permissions, then "
                      f"resume with --resume true){intact}")


# --- metrics after a resume ----------------------------------------------------------------------------

def truncate_metrics(path: str, last_step: int) -> int:
    """Keep the metrics.jsonl rows of steps <= last_step (the rows a resumed run will write again are
    dropped); returns how many were dropped."""
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= last_step:
                keep.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError, TypeError):  # a half-written last line of a killed run
            continue
    write_text_atomic(path, "".join(keep))
    return len(lines) - len(keep)


def after_last_event_file(folder: str) -> None:
    """TensorBoard reads a folder's event files in name order, whose first key is the writer's start
    second: a resumed run's writer must start in a later second than the killed one's, or its purge
    comes first and the killed run's rows stay visible. Waits at most a second."""
    if not os.path.isdir(folder):
        return
    stamps = [int(n.split(".")[3]) for n in os.listdir(folder)
              if n.startswith("events.out.tfevents.") and n.split(".")[3].isdigit()]
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.05)


# --- safe loading --------------------------------------------------------------------------------------

SAFE_WEIGHTS = (".safetensors", ".safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def refuse_pickle_only(path: str, allow: bool) -> None:
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


# --- distributed ---------------------------------------------------------------------------------------

def dist_timeout(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=float(seconds))


_PEER_SIGNS = ("connection closed by peer", "connection reset", "timed out", "timeout", "broken pipe",
               "nccl", "gloo", "socket", "ProcessGroup", "terminated")


def peer_failure_message(error: BaseException) -> str | None:
    """A one-line explanation when `error` is a collective that failed because another rank died or
    hung; None for anything else (a real bug keeps its traceback)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return None
    text = str(error)
    if not isinstance(error, (RuntimeError, OSError)) or not any(s.lower() in text.lower() for s in _PEER_SIGNS):
        return None
    first = text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
    return (f"rank {dist.get_rank()} of {dist.get_world_size()}: a collective operation failed, another rank "
            f"probably died or hung (its own log says why); this rank gives up (--dist_timeout bounds the wait): {first}")
