"""Writing files so that a kill never leaves half of one, and the one cache root.

Bottom layer: imports nothing of minidpo. Every writer of a file another run or process reads back
(checkpoints, exports, caches, metrics, round files) goes through `atomic_file` / `write_text_atomic`
(a file) or `commit_folder` / `cached_build` (a folder): written aside, flushed to disk, renamed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator

PARTIAL = ".partial"  # suffix of a folder being written; renamed to its final name once complete
CACHE_ROOT = os.path.join(".cache", "minidpo")  # relative to the working directory: the project's own


def cache_dir(kind: str) -> str:
    """`.cache/minidpo/<kind>`: converted models (gguf, minimind, lora), tokenized data, reference log-probs."""
    return os.path.join(CACHE_ROOT, kind)


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


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path beside `path` to write (with any writer: open, torch.save, np.savez);
    on success it is fsynced and renamed over `path`, so a reader sees the old file or the new, never
    half. suffix: an ending the writer insists on (np.savez appends .npz otherwise)."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}{suffix}"
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    fsync_dir(folder)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable) -> None:
    """One JSON object a line, all lines at once: a file that exists is complete (resume relies on it)."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


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


def cached_build(folder: str, build: Callable[[str], None], *, marker: str) -> str:
    """`folder`, made once by `build(tmp)`: written into a temporary sibling, flushed and renamed, so a
    killed conversion never leaves a half folder that looks done, and of two processes racing one wins.
    `marker` is the file inside that says the folder is complete."""
    if os.path.isfile(os.path.join(folder, marker)):
        return folder
    os.makedirs(os.path.dirname(os.path.abspath(folder)), exist_ok=True)
    tmp = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        fsync_tree(tmp)
        if not os.path.isfile(os.path.join(folder, marker)):  # not finished by another process meanwhile
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same build first
            if not os.path.isfile(os.path.join(folder, marker)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(os.path.dirname(os.path.abspath(folder)))
    return folder
