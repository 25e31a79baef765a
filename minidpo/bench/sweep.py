"""`make bench ARGS="--sweep"`: how cost grows with sequence length and model size.

For each model (default: the 26M bench model and a 135M SmolLM2-shaped one, random weights) and each
max length (default 512, 1024, 2048, 4096), a workload whose lengths scale with max length (median
prompt L/8, answer 3L/16, tail to 3L/4) is trained for a few steps with the same tokens per step
(batch = tokens_per_step / max length) by each trainer, in a fresh process each. A trainer that does
not fit (it fails, e.g. out of memory) is recorded as such and the sweep goes on. Writes
OUT/sweep.json, OUT/sweep.md and two plots: useful tokens/s and peak memory against max length, one
line per trainer and model.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

from minidpo.bench.settings import Settings
from minidpo.bench.workload import Workload, build, pair_work

DEFAULT_MODELS = "minimind-26m,smollm2-135m"
DEFAULT_LENGTHS = "512,1024,2048,4096"


def sweep_workload(model: str, max_length: int, pairs: int) -> Workload:
    """The bench's length spread, scaled from max length 512 to `max_length`."""
    scale = max_length / 512
    return Workload(model=model, pairs=pairs, prompt_median=max(4, round(64 * scale)),
                    response_median=max(2, round(96 * scale)), response_max=max(4, round(384 * scale)),
                    max_length=max_length)


def run_sweep(models: list[str], lengths: list[int], trainers: list[str], *, tokens_per_step: int, steps: int,
              dtype: str, threads: int, out: str, worker, log=print) -> dict:
    """Train every (model, length, trainer) point; `worker(trainer, workload_dir, settings, out_json)` is
    the bench's fresh-process runner. Returns the report also written to OUT/sweep.json."""
    points = []
    for model in models:
        for length in lengths:
            batch = max(1, tokens_per_step // length)
            w = sweep_workload(model, length, pairs=batch * steps)
            workload_dir = os.path.join(out, "sweep", f"workload-{model}-{length}")
            build(w, workload_dir)
            s = Settings(dtype=dtype, threads=threads, batch_size=batch, max_length=length,
                         max_prompt_length=length // 2)
            useful = pair_work(w)["useful_tokens"]
            for trainer in trainers:
                log(f"bench sweep: {model}, max length {length}, batch {batch}, {trainer}")
                point = {"model": model, "max_length": length, "batch_size": batch, "trainer": trainer,
                         "pairs": w.pairs, "useful_tokens": useful}
                try:
                    r = worker(trainer, workload_dir, s, os.path.join(out, "sweep", f"{model}-{length}-{trainer}.json"))
                except RuntimeError as e:  # did not fit, or failed: say so and go on
                    point.update(ok=False, error=str(e).splitlines()[0])
                    log(f"bench sweep:   failed: {point['error']}")
                else:
                    point.update(ok=True, seconds=r["seconds"], pairs_per_s=r["pairs"] / r["seconds"],
                                 useful_tokens_per_s=useful * r["pairs"] / w.pairs / r["seconds"],
                                 peak_memory_gb=r.get("peak_gpu_gb", r["peak_rss_gb"]),
                                 padding_fraction=1 - r["real_positions"] / max(r["positions"], 1))
                    log(f"bench sweep:   {point['useful_tokens_per_s']:.0f} useful tokens/s, "
                        f"peak {point['peak_memory_gb']:.2f} GB")
                points.append(point)
    report = {"settings": {"tokens_per_step": tokens_per_step, "steps": steps, "dtype": dtype, "threads": threads,
                           "models": models, "lengths": lengths, "trainers": trainers},
              "workload_at_512": asdict(sweep_workload(models[0], 512, 1)), "points": points,
              "growth": growth(points)}
    with open(os.path.join(out, "sweep.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out, "sweep.md"), "w") as f:
        f.write(markdown(report))
    report["plots"] = plot(points, out)
    return report


def growth(points: list[dict]) -> dict:
    """Per (model, trainer): tokens/s and peak memory at the longest length relative to the shortest."""
    out = {}
    for key in sorted({(p["model"], p["trainer"]) for p in points}):
        ok = sorted((p for p in points if (p["model"], p["trainer"]) == key and p["ok"]), key=lambda p: p["max_length"])
        if len(ok) >= 2:
            first, last = ok[0], ok[-1]
            out[f"{key[0]} / {key[1]}"] = {
                "lengths": [first["max_length"], last["max_length"]],
                "tokens_per_s_ratio": last["useful_tokens_per_s"] / first["useful_tokens_per_s"],
                "peak_memory_ratio": last["peak_memory_gb"] / first["peak_memory_gb"]}
    return out


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"Sweep: {s['tokens_per_step']} max-length tokens per step (batch = that / max length), {s['steps']} "
             f"steps, {s['dtype']}, {s['threads']} threads.", "",
             "| model | max length | batch | trainer | pairs/s | useful tokens/s | peak memory | padding |",
             "|---|---|---|---|---|---|---|---|"]
    for p in report["points"]:
        if p["ok"]:
            lines.append(f"| {p['model']} | {p['max_length']} | {p['batch_size']} | {p['trainer']} | {p['pairs_per_s']:.2f} | "
                         f"{p['useful_tokens_per_s']:.0f} | {p['peak_memory_gb']:.2f} GB | {p['padding_fraction']:.0%} |")
        else:
            lines.append(f"| {p['model']} | {p['max_length']} | {p['batch_size']} | {p['trainer']} | did not run: "
                         f"{p['error'][:80]} | | | |")
    for name, g in report["growth"].items():
        lines.append(f"\n{name}: from {g['lengths'][0]} to {g['lengths'][1]} tokens, tokens/s x{g['tokens_per_s_ratio']:.2f}, "
                     f"peak memory x{g['peak_memory_ratio']:.2f}")
    return "\n".join(lines) + "\n"


def plot(points: list[dict], out: str) -> list[str]:
    try:
        import matplotlib
    except ImportError as e:  # the `bench` extra brings it (make bench installs it)
        raise SystemExit("bench --sweep: the plots need matplotlib: pip install -e '.[bench]' (or make bench)") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, ylabel, name in (("useful_tokens_per_s", "useful tokens/s", "sweep_tokens_per_s.png"),
                              ("peak_memory_gb", "peak memory (GB)", "sweep_peak_memory.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for model, trainer in sorted({(p["model"], p["trainer"]) for p in points}):
            ok = sorted((p for p in points if p["ok"] and (p["model"], p["trainer"]) == (model, trainer)),
                        key=lambda p: p["max_length"])
            if ok:
                ax.plot([p["max_length"] for p in ok], [p[key] for p in ok], marker="o", label=f"{trainer}, {model}")
        ax.set_xscale("log", base=2)
        lengths = sorted({p["max_length"] for p in points})
        ax.set_xticks(lengths, [str(x) for x in lengths])
        ax.minorticks_off()
        ax.set_xlabel("max length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out, name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
