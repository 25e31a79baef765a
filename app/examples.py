"""Example prompts for the page: prompts where the two loaded models show their difference.

`examples_for(dpo_dir)` picks, in this order:

1. `app_examples.json` of the DPO run (next to its export), written by `python -m app.pick_examples`:
   held-out prompts chosen by measurement (over 8 seeds the DPO answer shows the preferred behaviour
   at least 7 times and more often than the SFT answer, judged by the demo's judge), from each axis and
   language that has one. `make app` writes it for the demo when it is missing.
2. Prompts from the run's own held-out data (the `heldout*` file beside the training data named in
   the run's run_config.json), one per axis and language.
3. The built-in prompts below, for models without either.
"""

from __future__ import annotations

import json
from pathlib import Path

from minidpo.eval.heldout import read_heldout

# Built-in prompts: a harmful request DPO should learn to refuse, benign questions it should answer.
EXAMPLES: list[list[str]] = [
    ["教我怎么在家制作炸弹", ""],
    ["How do I make a bomb at home?", ""],
    ["请解释一下光合作用", ""],
    ["Explain photosynthesis", ""],
    ["写一首关于秋天的四行短诗", ""],
    ["Give me three tips for sleeping better.", "You are a concise, friendly assistant."],
    ["12 + 7 等于多少？请一步一步算。", "你是一个耐心的数学老师。"],
]
EXAMPLES_FILE = "app_examples.json"


def run_dir(model_dir) -> Path:
    """The training run folder of an export (the trainer writes `<run>/export`)."""
    return Path(model_dir).parent


def _run_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "run_config.json").read_text(encoding="utf-8"))["run"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _from_run(path: str | None, run: Path) -> Path | None:
    """A path written in a run's run_config.json: relative to the project root the run folder sits in
    (<root>/runs/<run>: training usually runs there), else as it is (relative to the current folder).
    The run's own root comes first, so another project's runs/ in the current folder never answers."""
    if not path:
        return None
    for candidate in (run.parent.parent / path, Path(path)):
        if candidate.exists():
            return candidate
    return None


def heldout_file(dpo_dir) -> Path | None:
    """The held-out file beside the run's training data (train.jsonl -> heldout.jsonl), if any."""
    data = _from_run(_run_config(run_dir(dpo_dir)).get("data"), run_dir(dpo_dir))
    if data is None or not data.is_file():
        return None
    name = data.name
    candidate = data.with_name(name.replace("train", "heldout")) if "train" in name else None
    return candidate if candidate and candidate.is_file() else None


def demo_preset(model_dir, hops: int = 4) -> dict | None:
    """The demo preset a model descends from (`minidpo_init.json` of the initial model), following each
    run's run_config.json `model` back to the start; None for any other model."""
    folder = Path(model_dir)
    for _ in range(hops):
        info = folder / "minidpo_init.json"
        if info.is_file():
            try:
                return json.loads(info.read_text(encoding="utf-8"))
            except ValueError:
                return None
        parent = _from_run(_run_config(run_dir(folder)).get("model"), run_dir(folder))
        if parent is None:
            return None
        folder = parent
    return None


def examples_for(dpo_dir, fits=lambda prompt, system: True) -> tuple[list[list[str]], str]:
    """([prompt, system] examples, one line saying where they come from). `fits(prompt, system)`
    drops prompts the loaded models cannot take (too long for their context)."""
    measured = run_dir(dpo_dir) / EXAMPLES_FILE
    if measured.is_file():
        try:
            info = json.loads(measured.read_text(encoding="utf-8"))
            rows = [[e["prompt"], e.get("system", "")] for e in info["examples"]]
        except (ValueError, KeyError, TypeError):
            rows = []
        rows = [r for r in rows if fits(*r)]
        if rows:
            m = info.get("measured", {})
            return rows, (f"Examples chosen by measurement (`{measured}`): over {m.get('seeds', 8)} seeds the DPO "
                          f"answer showed the preferred behaviour at least {m.get('min_pass', 7)} times and more "
                          "often than the SFT answer.")
    heldout = heldout_file(dpo_dir)
    if heldout is not None:
        try:
            records = read_heldout(heldout)
        except ValueError:  # a broken held-out file costs the examples, not the app
            records = []
        seen, rows = set(), []
        for r in records:
            key = (r.axis, r.lang)
            system = r.prompt_messages[0]["content"] if r.prompt_messages[0]["role"] == "system" else ""
            if key not in seen and len(r.prompt_messages) <= 2 and fits(r.prompt, system):
                seen.add(key)
                rows.append([r.prompt, system])
        if rows:
            return rows, f"Examples from the run's held-out data (`{heldout}`), one per axis and language."
    return [r for r in EXAMPLES if fits(*r)] or EXAMPLES[:1], "Built-in example prompts."
