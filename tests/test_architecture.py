"""The tree's shape: the layer contract (import-linter, pyproject.toml) and no module over 400 lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def test_layers_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_no_module_over_400_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for folder in ("minidpo", "app", "trainer") for p in (ROOT / folder).rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_importing_the_library_sets_no_environment():
    code = ("import os; before = dict(os.environ); import minidpo, minidpo.train, minidpo.eval, minidpo.models; "
            "print(sorted(k for k in os.environ if os.environ.get(k) != before.get(k)))")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "GRADIO_"))}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    changed = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - our own printed list
    assert not [k for k in changed if k.startswith(("HF_HUB", "TRANSFORMERS_OFFLINE", "GRADIO"))]
