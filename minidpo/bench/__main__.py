"""`make bench`: minidpo, TRL's DPOTrainer and a MiniMind-style loop on one generated workload.

    python -m minidpo.bench [--model minimind-26m] [--pairs 256] [--dtype bf16] [--threads 2] [--rounds 2]
                            [--trainers minidpo,trl,naive] [--workload plain|skewed] [--out runs/bench]

1. Builds the workload (model folder + pairs, see workload.py) and measures this machine's matmul peak.
2. Numerics check: every trainer trains the same first batches (minidpo's plan) for --check-steps
   steps; step 0 must give ln 2 and the following losses must agree. A speed-up that changes the
   numbers is a bug, so a failed check fails the bench.
3. Timing: --rounds rounds of one epoch per trainer, interleaved A B C A B C, each in a fresh process;
   the median round counts. Each trainer's clock covers its whole training, reference work included.
Writes OUT/bench.json and OUT/bench.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
from dataclasses import asdict

from minidpo.bench.flops import dpo_pair_flops, list_flops
from minidpo.bench.settings import LISTWISE, TRAINERS, Settings
from minidpo.bench.workload import (LIST_K, MODELS, PAIRS_PER_LIST, Workload, build, generate_lists, generate_pairs,
                                    list_pairs, pair_work, skewed_workload)
from minidpo.data import TokenizedPair, batch_plan
from minidpo.data.collate import padded_length
from minidpo.distributed import launch_env

DEFAULT_TRAINERS = "minidpo,minidpo-simpo,minidpo-lora,trl,naive"
SKEWED_TRAINERS = "minidpo,minidpo-budget,trl"  # --workload skewed: fixed batches against a token budget
LABELS = {"minidpo": "minidpo", "minidpo-ac": "minidpo, activation checkpointing", "trl": "TRL DPOTrainer",
          "naive": "MiniMind-style loop (naive)", "minidpo-simpo": "minidpo, SimPO (no reference model)",
          "minidpo-lora": "minidpo, LoRA r=16 (reference = adapter off, no reference engine)",
          "minidpo-budget": "minidpo, token budget (--max_tokens_per_batch)",
          "minidpo-listwise": f"minidpo, K={LIST_K} lists, one row each (listwise_pairs)",
          "minidpo-listwise-pairs": f"minidpo, the same lists as {PAIRS_PER_LIST} pairs each (sigmoid)"}
OTHER_OBJECTIVES = ("minidpo-simpo",)  # timed and measured beside DPO; not in the DPO numerics check or targets
# trains other parameters (LoRA), other batches (a token budget) or other data (the lists): only its step-0
# loss (ln 2) is checked
DIFFERENT_UPDATES = ("minidpo-lora", "minidpo-budget") + LISTWISE


def _env(threads: int) -> dict:
    # each worker is a one-process run of its own: an inherited rendezvous (a port another process
    # already listens on) must not leak into it
    env = launch_env()
    env.update(OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", GRADIO_ANALYTICS_ENABLED="False",
               USE_HUB_KERNELS="NO")  # transformers + the `kernels` package would fetch TRL's CUDA kernels
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(".cache", "torch_extensions"))
    return env


def _worker(trainer: str, workload_dir: str, s: Settings, out: str, order=None) -> dict:
    cmd = [sys.executable, "-m", "minidpo.bench.worker", "--trainer", trainer, "--workload", workload_dir,
           "--settings", json.dumps(asdict(s)), "--out", out]
    if order is not None:
        with open(out[:-5] + ".order.json", "w") as f:
            json.dump(order, f)
        cmd += ["--order", out[:-5] + ".order.json"]
    log = out[:-5] + ".log"
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(s.threads))
    if done.returncode:
        tail = open(log).read()[-3000:]
        raise RuntimeError(f"bench: {trainer} failed (exit {done.returncode}); log {log}:\n{tail}")
    with open(out) as f:
        return json.load(f)


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def _has_bf16_units() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return any(flag in _cpuinfo() for flag in ("avx512_bf16", "amx_bf16"))


def _machine(threads: int) -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    names = [line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")]
    cpu = names[0] if names else (platform.processor() or platform.machine())
    cpu += "" if _has_bf16_units() else " (no avx512_bf16/amx)"
    return f"{cpu}, {os.cpu_count()} cores, {threads} threads"


def check_numerics(results: dict, tolerance: float) -> list[str]:
    """Problems with the check runs' losses (empty when they agree)."""
    problems = []
    for name, r in results.items():
        if abs(r["losses"][0] - math.log(2)) > tolerance:
            problems.append(f"{name}: step-0 loss {r['losses'][0]:.5f} is not ln 2 = {math.log(2):.5f}")
    base = results.get("minidpo") or next(iter(results.values()))
    for name, r in results.items():
        if name in DIFFERENT_UPDATES:
            continue
        for step, (a, b) in enumerate(zip(r["losses"], base["losses"])):
            if abs(a - b) > tolerance:
                problems.append(f"{name}: step-{step} loss {a:.5f} differs from minidpo's {b:.5f}")
    return problems


def unit_work(name: str, w: Workload) -> tuple[float, float, int]:
    """What one row a trainer counts holds: (model FLOPs, useful tokens, pairs), as means over the data it
    trains on. A row is a pair, or for minidpo-listwise a list of LIST_K answers: PAIRS_PER_LIST pairs."""
    if name == "minidpo-listwise":
        lists = generate_lists(w)
        flops = sum(list_flops(w.model_config, len(p), [len(a) for a in answers]) for p, answers in lists)
        tokens = sum(len(p) * len(answers) + sum(map(len, answers)) for p, answers in lists)
        return flops / len(lists), tokens / len(lists), PAIRS_PER_LIST
    pairs = list_pairs(w) if name == "minidpo-listwise-pairs" else generate_pairs(w)
    flops = sum(dpo_pair_flops(w.model_config, len(p), len(c), len(r)) for p, c, r in pairs) / len(pairs)
    if name == "minidpo-simpo":  # no reference forward: the policy's forward + backward, 3 of DPO's 4 forwards
        flops *= 3 / 4
    return flops, sum(2 * len(p) + len(c) + len(r) for p, c, r in pairs) / len(pairs), 1


def summarise(name: str, runs: list[dict], w: Workload, peak_gflops: float) -> dict:
    mean_flops, mean_tokens, pairs_per_row = unit_work(name, w)
    r = sorted(runs, key=lambda x: x["seconds"])[len(runs) // 2]  # the median round
    rate = r["pairs"] / r["seconds"]  # rows (pairs, or lists) a second
    return {
        "trainer": name, "pairs": r["pairs"] * pairs_per_row, "seconds": round(r["seconds"], 2),
        "seconds_all_rounds": [round(x["seconds"], 2) for x in runs],
        "pairs_per_s": rate * pairs_per_row, "useful_tokens_per_s": rate * mean_tokens,
        "computed_positions": r["positions"], "padded_positions": r["positions"] - r["real_positions"],
        "padding_fraction": 1 - r["real_positions"] / max(r["positions"], 1),
        "peak_rss_gb": max(x["peak_rss_gb"] for x in runs),
        # on a GPU the memory that limits a run is the GPU's; on a CPU it is the process's RSS
        "peak_memory_gb": max(x.get("peak_gpu_gb", x["peak_rss_gb"]) for x in runs),
        "mfu": rate * mean_flops / (peak_gflops * 1e9),
    }


def targets(results: dict) -> dict:
    """The issue's targets for each minidpo variant: pairs/s >= 3x TRL's and the MiniMind-style loop's,
    MFU >= 45%, peak memory <= 0.6x TRL's (only the comparisons whose trainers ran)."""
    out = {}
    for name, r in results.items():
        if not name.startswith("minidpo") or name in OTHER_OBJECTIVES + LISTWISE:  # LISTWISE: other data
            continue
        t = {"mfu >= 45%": r["mfu"] >= 0.45}
        if "trl" in results:
            t["pairs/s >= 3x TRL"] = r["pairs_per_s"] >= 3 * results["trl"]["pairs_per_s"]
            t["memory <= 0.6x TRL"] = r["peak_memory_gb"] <= 0.6 * results["trl"]["peak_memory_gb"]
        if "naive" in results:
            t["pairs/s >= 3x MiniMind-style"] = r["pairs_per_s"] >= 3 * results["naive"]["pairs_per_s"]
        out[name] = t
    return out


def markdown(report: dict) -> str:
    rows = report["results"]
    trl = rows.get("trl")
    w = report["workload"]
    spread = f", {w['long_fraction']:.0%} of them {w['long_scale']:g}x longer" if w.get("long_fraction") else ""
    budget = (f" (token budget {report['settings']['token_budget']} positions)" if "minidpo-budget" in rows else "")
    lines = [f"Workload: {w['model']} Llama, {w['pairs']} pairs "
             f"(median prompt {report['work']['prompt_median']}, response {report['work']['response_median']}, "
             f"max {report['work']['response_max']}{spread}), batch {report['settings']['batch_size']}{budget}, "
             f"{report['settings']['dtype']}, {report['settings']['threads']} threads; machine: {report['machine']}; "
             f"{report['settings']['dtype']} matmul peak {report['peak_gflops']:.0f} GFLOP/s; "
             f"median of {report['rounds']} interleaved rounds.", "",
             f"| trainer | pairs/s | useful tokens/s | padded positions | peak {report['memory_kind']} | MFU | "
             f"pairs/s vs TRL | memory vs TRL |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        vs = (f"{r['pairs_per_s'] / trl['pairs_per_s']:.2f}x", f"{r['peak_memory_gb'] / trl['peak_memory_gb']:.2f}x") \
            if trl else ("-", "-")
        lines.append(f"| {LABELS[name]} | {r['pairs_per_s']:.2f} | {r['useful_tokens_per_s']:.0f} | "
                     f"{r['padded_positions']} ({r['padding_fraction']:.0%}) | {r['peak_memory_gb']:.2f} GB | "
                     f"{r['mfu']:.1%} | {vs[0]} | {vs[1]} |")
    if set(LISTWISE) & set(rows):
        lines += ["", f"Listwise rows: {max(1, w['pairs'] // PAIRS_PER_LIST)} lists of {LIST_K} answers (the same "
                  f"length spread), {PAIRS_PER_LIST} pairs each; pairs/s counts {PAIRS_PER_LIST} pairs a list; useful "
                  "tokens and MFU count each [prompt, answer] once per list (as separate sequences would); the lists "
                  "score the reference per batch; their pairs are trained as the minidpo row trains pairs."]
    for name, t in report["targets"].items():
        lines += ["", f"Targets, {LABELS[name]}: " + ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in t.items())]
    check = report["check"]
    lines += ["", f"Numerics check ({check['steps']} steps, same batches): "
              + ("losses agree" if not check["problems"] else "FAILED: " + "; ".join(check["problems"]))
              + " — " + ", ".join(f"{LABELS[n]} {[round(x, 4) for x in ls]}" for n, ls in check["losses"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minimind-26m", choices=list(MODELS))
    p.add_argument("--pairs", type=int, default=None, help="default 256 (plain), 512 (skewed)")
    p.add_argument("--workload", default="plain", choices=["plain", "skewed"],
                   help="skewed: 95%% short pairs, 5%% ten times longer, max length 1024 (for token budgets)")
    p.add_argument("--token-budget", type=int, default=2048, help="minidpo-budget's --max_tokens_per_batch")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 where the hardware has bf16 units (GPU, AVX512-bf16/AMX CPU), else fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--check-steps", type=int, default=3)
    p.add_argument("--tolerance", type=float, default=None, help="loss agreement (default: 1e-4 fp32, 2e-2 bf16)")
    p.add_argument("--trainers", default=None,
                   help=f"comma-separated, from {', '.join(TRAINERS)} (minidpo-ac: minidpo with activation "
                        f"checkpointing; default {DEFAULT_TRAINERS}, skewed: {SKEWED_TRAINERS})")
    p.add_argument("--out", default=os.path.join("runs", "bench"))
    # the scaling sweep (minidpo/bench/sweep.py)
    p.add_argument("--sweep", action="store_true", help="sweep max length and model size instead (see sweep.py)")
    p.add_argument("--sweep-models", default="minimind-26m,smollm2-135m")
    p.add_argument("--sweep-lengths", default="512,1024,2048,4096")
    p.add_argument("--sweep-trainers", default="minidpo,minidpo-ac,minidpo-lora,minidpo-simpo,trl")
    p.add_argument("--tokens-per-step", type=int, default=4096, help="sweep: batch = this / max length")
    p.add_argument("--sweep-steps", type=int, default=4, help="sweep: steps per point")
    a = p.parse_args(argv)
    a.trainers = a.trainers or (SKEWED_TRAINERS if a.workload == "skewed" else DEFAULT_TRAINERS)
    trainers = [t for t in a.trainers.split(",") if t]
    unknown = set(trainers) - set(TRAINERS)
    if unknown or not trainers:
        p.error(f"--trainers: unknown {sorted(unknown)}; choose from {', '.join(TRAINERS)}")
    if "trl" in trainers:
        try:
            import trl  # noqa: F401
        except ImportError:
            p.error("TRL is not installed: pip install -e '.[bench]' (or make bench, which does), "
                    "or leave it out with --trainers minidpo,naive")
    os.makedirs(a.out, exist_ok=True)
    if a.workload == "skewed":
        w = skewed_workload(a.model, a.pairs or 512)
    else:
        w = Workload(model=a.model, pairs=a.pairs or 256)
    dtype = a.dtype if a.dtype != "auto" else ("bf16" if _has_bf16_units() else "fp32")
    s = Settings(dtype=dtype, threads=a.threads, max_length=w.max_length, max_prompt_length=w.max_length // 2,
                 token_budget=a.token_budget)
    if a.sweep:
        from minidpo.bench.sweep import run_sweep

        sweep_trainers = [t for t in a.sweep_trainers.split(",") if t]
        if set(sweep_trainers) - set(TRAINERS) or set(a.sweep_models.split(",")) - set(MODELS):
            p.error(f"--sweep-trainers from {', '.join(TRAINERS)}; --sweep-models from {', '.join(MODELS)}")
        report = run_sweep(a.sweep_models.split(","), [int(x) for x in a.sweep_lengths.split(",")], sweep_trainers,
                           tokens_per_step=a.tokens_per_step, steps=a.sweep_steps, dtype=dtype, threads=a.threads,
                           out=a.out, worker=_worker, log=lambda m: print(m, flush=True))
        print(open(os.path.join(a.out, "sweep.md")).read() + "plots: " + ", ".join(report["plots"]))
        return 0
    workload_dir = os.path.join(a.out, f"workload-{a.workload}-{a.model}-{w.pairs}")
    build(w, workload_dir)
    print(f"bench: workload in {workload_dir}; {dtype}; measuring the {dtype} matmul peak", flush=True)
    peak = json.loads(subprocess.run([sys.executable, "-m", "minidpo.bench.peak", "--dtype", dtype, "--threads",
                                      str(a.threads)], capture_output=True, text=True, check=True,
                                     env=_env(a.threads)).stdout)["gflops"]

    lengths = [padded_length(TokenizedPair(*pair), packed=True) for pair in generate_pairs(w)]
    order = batch_plan(lengths, s.batch_size, seed=s.seed, epoch=0)[:a.check_steps]  # minidpo's own first batches
    # a larger learning rate for the check, so that a mismatch shows in the losses within a few steps
    check_settings = Settings(**{**asdict(s), "max_steps": a.check_steps, "learning_rate": 20 * s.learning_rate})
    check = {}
    for t in [t for t in trainers if t not in OTHER_OBJECTIVES]:
        print(f"bench: numerics check, {t}", flush=True)
        check[t] = _worker(t, workload_dir, check_settings, os.path.join(a.out, f"check_{t}.json"),
                           order=None if t.startswith("minidpo") else order)
    tolerance = a.tolerance if a.tolerance is not None else (1e-4 if dtype == "fp32" else 2e-2)
    problems = check_numerics(check, tolerance) if check else []

    runs = {t: [] for t in trainers}
    for rnd in range(a.rounds):
        for t in trainers:
            print(f"bench: round {rnd + 1}/{a.rounds}, {t}", flush=True)
            runs[t].append(_worker(t, workload_dir, s, os.path.join(a.out, f"round{rnd}_{t}.json")))
            r = runs[t][-1]
            rows = "lists" if t == "minidpo-listwise" else "pairs"
            print(f"bench:   {r['pairs']} {rows} in {r['seconds']:.1f} s, peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)
    results = {t: summarise(t, rs, w, peak) for t, rs in runs.items()}
    gpu = any("peak_gpu_gb" in x for rs in runs.values() for x in rs)
    report = {"machine": _machine(a.threads), "peak_gflops": peak, "memory_kind": "GPU memory" if gpu else "RSS",
              "rounds": a.rounds, "workload": asdict(w), "work": pair_work(w), "settings": asdict(s),
              "check": {"steps": a.check_steps, "tolerance": tolerance, "problems": problems,
                        "losses": {t: r["losses"] for t, r in check.items()}},
              "results": results}
    if "trl" in trainers:
        for t, r in report["results"].items():
            r["pairs_per_s_vs_trl"] = r["pairs_per_s"] / report["results"]["trl"]["pairs_per_s"]
            r["peak_memory_vs_trl"] = r["peak_memory_gb"] / report["results"]["trl"]["peak_memory_gb"]
    report["targets"] = targets(report["results"])
    with open(os.path.join(a.out, "bench.json"), "w") as f:
        json.dump(report, f, indent=2)
    text = markdown(report)
    with open(os.path.join(a.out, "bench.md"), "w") as f:
        f.write(text)
    print(text)
    if problems:
        print("bench: the numerics check failed: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
