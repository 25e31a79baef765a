"""Every error a person can fix, and the one way an entry point turns them into a line and an exit code.

This module is the bottom of the tree: it imports nothing of minidpo. Raise the narrowest type; each
message names the setting, file, record or field and says what to do.

    ConfigError   a setting is wrong (flags, YAML, DeepSpeed JSON)         exit 2
      ModelError  a model cannot be used (role, path, what to do)           exit 2
      SourceError a model source cannot be converted (GGUF, MiniMind, ...)  exit 2
    DataError     a preference / benchmark record is wrong (file:line:field) exit 2
    FaultError    a run stopped for a reason to act on (NaN steps, failed save, lost rank)  exit 3

Entry points call `run_cli(main_fn)`: the user's errors become `error: <message>` on stderr and an exit
code; a collective that failed because a peer rank died is one line and exit 4; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

# Nothing minidpo runs may reach a model hub: the entry points set this once, before transformers,
# huggingface_hub or gradio are imported (they read it at import time).
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
}


class ConfigError(ValueError):
    """A setting is wrong; the message names it and says what to do."""


class ModelError(ConfigError):
    """A model cannot be used; the message names the role, the path and what to do."""


class SourceError(ConfigError):
    """A model source cannot be used or converted; the message names the path and what was expected."""


class DataError(ValueError):
    """A problem with the data. The message names the file, the line (or record) and the field.

    `reason` is a short category ("malformed JSON", "missing field", ...) used to count skipped records.
    """

    def __init__(self, message: str, reason: str = "bad record"):
        super().__init__(message)
        self.reason = reason


class FaultError(RuntimeError):
    """A run stopped for a reason the user must act on (non-finite steps, a failed save, a lost rank)."""


USER_ERRORS = (ConfigError, DataError, FileNotFoundError)
EXIT_USER, EXIT_FAULT, EXIT_PEER = 2, 3, 4


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`: what a one-line error quotes of a library's exception."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def set_offline_environment() -> None:
    """Called by every entry point (never on import of the library): no hub, no telemetry."""
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def run_cli(main: Callable[[], object], *, peer_failure: Callable[[BaseException], str | None] | None = None,
            on_exit: Callable[[], None] | None = None, prefix: str = "error: ") -> int:
    """Run an entry point's `main()`; returns its exit code (an int it returned, else 0).

    peer_failure: explains an exception as a dead or hung peer rank (minidpo.distributed), or None.
    on_exit: always called last (e.g. tear the process group down). prefix: what starts the line."""
    try:
        code = main()
        return code if isinstance(code, int) else 0
    except USER_ERRORS as e:
        print(f"{prefix}{e}", file=sys.stderr, flush=True)
        return EXIT_USER
    except FaultError as e:
        print(f"{prefix}{e}", file=sys.stderr, flush=True)
        return EXIT_FAULT
    except BrokenPipeError:  # `... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        message = peer_failure(e) if peer_failure else None
        if message is None:
            raise
        print(f"{prefix}{message}", file=sys.stderr, flush=True)
        os._exit(EXIT_PEER)  # not the process-group teardown: it could wait on the dead rank
    finally:
        if on_exit is not None:
            on_exit()
