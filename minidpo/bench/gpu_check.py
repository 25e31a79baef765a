"""`make gpu-check`: one script that says whether minidpo trains right and fast on the GPU at hand.

    python -m minidpo.bench.gpu_check [--size auto|full|toy] [--out runs/gpu-check] [--steps 4]
                                      [--bench-pairs 128] [--skip-bench]

On a GPU (size full, under 8 minutes on an H100/H200-class card):
1. Builds a Qwen2.5-0.5B-shaped model from config (random weights, nothing downloaded) and the
   bench's generated pairs (minidpo/bench/workload.py).
2. Trains it with `minidpo.train.train` for --steps steps in bf16 and in fp16 (dynamic loss scaling),
   under ZeRO-2 and ZeRO-3, with and without the shared-prompt forward (8 variants, the same batches):
   step 0 must give ln 2, and the variants of one precision must agree on step 0's log-probs and
   step 1's loss (later steps: reported as drift, see check_variants).
3. Checks the packed and the plain forward's log-probs against eager fp32 attention (forward_against_eager).
4. Runs the bench's GPU mode (minidpo against TRL's DPOTrainer, same workload, numerics check).
5. Writes OUT/gpu_check.json: the card, pairs/s, tokens/s, MFU against the card's bf16 peak (table
   below) and against the measured matmul peak, peak memory, and which optimizer and attention kernel ran.
On a CPU (size toy) the same steps run on a tiny model in fp32 (fp16 is refused on a CPU and skipped
with a line), so the script is known to work before a GPU is seen (tests/test_gpu_check.py).
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import subprocess
import sys
import time

# torch and minidpo are imported inside the functions: main() sets OMP_NUM_THREADS, which torch reads when it loads

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets; matched in this
# order against torch.cuda.get_device_name(), so the more specific names come first.
BF16_PEAK_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200", 989.0), ("H100", 989.0), ("GH200", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
]
# what each precision is checked to: step 0 against ln 2, and the variants' losses against each other
TOLERANCE = {"fp32": (1e-5, 1e-4), "bf16": (5e-3, 2e-2), "fp16": (5e-3, 2e-2)}
# an answer's summed log-prob against eager fp32 attention (nats; answers of 40-230 tokens). Measured on an
# H200 with the 0.5B model: fp32 0.000, bf16 0.17 (packed and plain alike)
EAGER_TOLERANCE = {"fp32": 0.01, "bf16": 1.0, "fp16": 1.0}


def card_bf16_peak_tflops(name: str) -> float | None:
    for key, peak in BF16_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


@contextlib.contextmanager
def no_checkpoints():
    """The variants measure training, not saving: writing a 0.5B model's optimizer state eight times
    would take minutes and ~50 GB of disk."""
    from minidpo import checkpoint

    saved = checkpoint.save, checkpoint.export_hf
    checkpoint.save = checkpoint.export_hf = lambda *a, **k: None
    try:
        yield
    finally:
        checkpoint.save, checkpoint.export_hf = saved


def train_variant(paths: dict, out_dir: str, *, dtype: str, stage: int, shared_prompt: bool, steps: int) -> dict:
    """One short training run; its losses, speed and peak memory."""
    import torch

    from minidpo.config import RunConfig
    from minidpo.ds_config import optimizer_name
    from minidpo.train import train

    cfg = RunConfig(
        model=paths["model"], data=paths["data"], output_dir=out_dir,
        deepspeed=os.path.join(ROOT, "ds_configs", f"zero{stage}.json"), dtype=dtype, shared_prompt=shared_prompt,
        batch_size=4, max_steps=steps, learning_rate=1e-4, min_lr_ratio=1.0, warmup_steps=0, weight_decay=0.0,
        beta=0.1, max_length=512, max_prompt_length=256, seed=0, log_interval=1, save_interval=0, export=False,
        # the same batches in every variant: grouping by length sorts by the row's length, which differs
        # between packed rows (prompt + both answers) and plain ones (prompt + the longer answer)
        group_by_length=False)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with no_checkpoints():
        summary = train(cfg)
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    with open(os.path.join(out_dir, "run_config.json")) as f:
        ds_config = json.load(f)["deepspeed"]
    trained, seconds = summary["trained"], summary["seconds"]
    # a step skipped by fp16's loss scaling (gradients overflowed) logs no loss: None keeps the steps aligned
    return {"name": f"{dtype}, ZeRO-{stage}, shared prompt {'on' if shared_prompt else 'off'}", "dtype": dtype,
            "zero": stage, "shared_prompt": shared_prompt, "losses": [r.get("loss") for r in rows],
            "step0_logps": [rows[0].get("logps/chosen"), rows[0].get("logps/rejected")],
            "seconds": seconds, "pairs_per_s": trained["pairs"] / seconds, "tokens_per_s": trained["tokens"] / seconds,
            "peak_memory_gb": max(r["memory/peak_gb"] for r in rows), "optimizer": optimizer_name(ds_config)}


def check_variants(variants: list[dict]) -> list[str]:
    """Problems: a step-0 loss that is not ln 2, step-0 log-probs (same weights, same batch) or a step-1
    loss (after one identical update) that differ from the first variant of the same precision: the ZeRO
    stage and the packed forward change no numbers beyond rounding. Later steps are not compared, only
    reported (`drift`): in bf16 rounding differences grow step by step (measured on an H200 with random
    weights: packed vs plain 0.006 apart at step 1, 0.1 at step 3), and a step skipped by fp16's loss
    scaling leaves the variants' weights different."""
    problems, first = [], {}
    for v in variants:
        step0, agree = TOLERANCE[v["dtype"]]
        losses = v["losses"]
        if losses[0] is None or abs(losses[0] - math.log(2)) > step0:
            problems.append(f"{v['name']}: step-0 loss {_fmt(losses[0])} is not ln 2 = {math.log(2):.5f}")
        base = first.setdefault(v["dtype"], v)
        for what, a, b in zip(("log pi(chosen)", "log pi(rejected)"), v.get("step0_logps", ()), base.get("step0_logps", ())):
            if a is not None and b is not None and abs(a - b) > agree * max(1.0, abs(b)) / 10:
                problems.append(f"{v['name']}: step-0 {what} {a:.4f} differs from {base['name']}'s {b:.4f}")
        if len(losses) != len(base["losses"]):
            problems.append(f"{v['name']}: {len(losses)} steps, {base['name']}: {len(base['losses'])}")
        for step, (a, b) in enumerate(zip(losses[:2], base["losses"][:2])):
            if step and a is not None and b is not None and abs(a - b) > agree:
                problems.append(f"{v['name']}: step-{step} loss {a:.5f} differs from {base['name']}'s {b:.5f}")
        both = [abs(a - b) for a, b in zip(losses, base["losses"]) if a is not None and b is not None]
        v["drift"] = max(both, default=0.0)
    return problems


def _fmt(x) -> str:
    return "none (step skipped)" if x is None else f"{x:.5f}"


def probe_pairs(paths: dict, n: int) -> tuple:
    """(tokenizer, the workload's first n pairs, tokenized as training tokenizes them) for the forward probes."""
    from minidpo.data import load_preference_data
    from minidpo.models import load_tokenizer

    tok = load_tokenizer(paths["model"])
    data = load_preference_data(paths["data"], tok, max_length=512, max_prompt_length=256, cache_dir=None, log=None)
    return tok, [data[i] for i in range(n)]


def attention_kernels(paths: dict, dtype: str) -> dict:
    """The attention implementation and the attention ops one forward runs, packed and plain (profiled)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from minidpo.data import collate_pairs
    from minidpo.data.collate import collate_packed
    from minidpo.logprobs import pair_logps
    from minidpo.models import DTYPES, load_causal_lm
    from minidpo.packed_attention import NAME as SPLIT_ATTENTION

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_causal_lm(paths["model"], trainable=False).to(dev, DTYPES[dtype]).eval()
    tok, pairs = probe_pairs(paths, 2)
    report = {"implementation": model.config._attn_implementation}
    for name, collate in (("packed", collate_packed), ("plain", collate_pairs)):
        batch = {k: v.to(dev) for k, v in collate(pairs, tok.pad_token_id).items()}
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            pair_logps(model, batch, "sum")
        report[name] = sorted({e.key for e in prof.key_averages()
                               if "scaled_dot_product" in e.key or "attention" in e.key.lower()})
        if name == "packed":  # sdpa models run packed rows as two causal calls (minidpo/packed_attention.py)
            split = model.config._attn_implementation == SPLIT_ATTENTION
            report["packed_attention"] = "two causal sdpa calls per layer" if split else "dense 4D mask"
    del model
    gc.collect()
    return report


def forward_against_eager(paths: dict, dtype: str, n_pairs: int = 4) -> dict:
    """Each answer's summed log-prob from the packed and the plain forward (`dtype`, the kernels the card
    picks) against the truth: every [prompt, answer] alone, eager attention, fp32, log-softmax by hand.
    Returns the largest difference of each, in nats per answer."""
    import torch

    from minidpo.data import collate_pairs
    from minidpo.data.collate import collate_packed
    from minidpo.logprobs import pair_logps
    from minidpo.models import DTYPES, load_causal_lm

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok, pairs = probe_pairs(paths, n_pairs)
    model = load_causal_lm(paths["model"], trainable=False).to(dev).eval()
    model.config._attn_implementation = "eager"
    truth = []
    with torch.no_grad():
        for p in pairs:
            for answer in (p.chosen_ids, p.rejected_ids):
                ids = torch.tensor([list(p.prompt_ids) + list(answer)], device=dev)
                logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
                truth.append(float(logps.gather(-1, ids[0, 1:, None])[len(p.prompt_ids) - 1:].sum()))
    model.config._attn_implementation = "sdpa"
    model.to(DTYPES[dtype])
    report = {}
    for name, collate in (("packed", collate_packed), ("plain", collate_pairs)):
        batch = {k: v.to(dev) for k, v in collate(pairs, tok.pad_token_id).items()}
        with torch.no_grad():
            chosen, rejected, _ = pair_logps(model, batch, "sum")
        ours = [float(x) for c, r in zip(chosen, rejected) for x in (c, r)]
        report[name] = max(abs(a - b) for a, b in zip(ours, truth))
    del model
    gc.collect()
    return report


def run_bench(model: str, pairs: int, dtype: str, threads: int, out: str) -> dict:
    """The bench's own CLI (minidpo against TRL, numerics check included), in a fresh process."""
    cmd = [sys.executable, "-m", "minidpo.bench", "--model", model, "--pairs", str(pairs), "--rounds", "1",
           "--trainers", "minidpo,trl", "--dtype", dtype, "--threads", str(threads), "--check-steps", "2",
           "--out", out]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    with open(os.path.join(out, "bench_console.log"), "w") as f:
        f.write(done.stdout + done.stderr)
    if not os.path.isfile(os.path.join(out, "bench.json")):
        raise RuntimeError(f"gpu-check: the bench failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    with open(os.path.join(out, "bench.json")) as f:
        report = json.load(f)
    report["exit_code"] = done.returncode
    return report


def bench_figures(bench: dict, card_peak_tflops: float | None) -> dict:
    rows = {}
    for name, r in bench["results"].items():
        flops_per_s = r["mfu"] * bench["peak_gflops"] * 1e9  # the bench's model FLOPs per second
        rows[name] = {"pairs_per_s": r["pairs_per_s"], "useful_tokens_per_s": r["useful_tokens_per_s"],
                      "peak_memory_gb": r["peak_memory_gb"], "mfu_vs_measured_peak": r["mfu"],
                      "mfu_vs_card_bf16_peak": flops_per_s / (card_peak_tflops * 1e12) if card_peak_tflops else None}
    out = {"results": rows, "numerics_check": bench["check"]["problems"] or "losses agree",
           "dtype": bench["settings"]["dtype"], "pairs": bench["workload"]["pairs"]}
    if "trl" in rows and "minidpo" in rows:
        out["minidpo_vs_trl"] = {"pairs_per_s": rows["minidpo"]["pairs_per_s"] / rows["trl"]["pairs_per_s"],
                                 "peak_memory": rows["minidpo"]["peak_memory_gb"] / rows["trl"]["peak_memory_gb"]}
    return out


def write_report(out: str, report: dict, started: float) -> None:
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["ok"] = not report["problems"]
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="auto", choices=["auto", "full", "toy"],
                   help="full: the 0.5B model (a GPU); toy: a tiny model (a CPU, the test); auto: full on a GPU")
    p.add_argument("--out", default=os.path.join("runs", "gpu-check"))
    p.add_argument("--steps", type=int, default=4, help="training steps per variant")
    p.add_argument("--bench-pairs", type=int, default=None, help="pairs of the bench's workload (default 128; toy 8)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (toy size)")
    p.add_argument("--skip-bench", action="store_true")
    a = p.parse_args(argv)
    started = time.perf_counter()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch

    from minidpo.bench.peak import measure
    from minidpo.bench.workload import MODELS, Workload, build

    cuda = torch.cuda.is_available()
    size = ("full" if cuda else "toy") if a.size == "auto" else a.size
    model = "qwen2.5-0.5b" if size == "full" else "tiny"
    bench_pairs = a.bench_pairs or (128 if size == "full" else 8)
    if not cuda:
        torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    log = lambda msg: print(f"gpu-check: {msg}", flush=True)  # noqa: E731
    device = torch.cuda.get_device_name(0) if cuda else "CPU (no GPU: toy size)"
    log(f"{device}; {model} model ({MODELS[model]['hidden_size']} hidden, {MODELS[model]['num_hidden_layers']} layers, "
        f"vocab {MODELS[model]['vocab_size']}), random weights")
    if bench_pairs < 4 * a.steps:
        p.error(f"--bench-pairs {bench_pairs}: the variants need 4 pairs per step, at least {4 * a.steps}")
    # the bench's own workload folder, so that the bench reuses the model built here
    paths = build(Workload(model=model, pairs=bench_pairs), os.path.join(a.out, "bench", f"workload-{model}-{bench_pairs}"))

    dtypes, skipped = (["bf16", "fp16"], []) if cuda else (["fp32"], [
        "bf16: not run on a CPU (emulated where the CPU has no bf16 units; fp32 stands in)",
        "fp16: skipped (DeepSpeed refuses fp16 on a CPU)"])
    for line in skipped:
        log(line)
    variants = []
    for dtype in dtypes:
        for stage in (2, 3):
            for shared in (True, False):
                name = f"{dtype}-zero{stage}-{'packed' if shared else 'plain'}"
                log(f"variant {name}")
                v = train_variant(paths, os.path.join(a.out, "variants", name), dtype=dtype, stage=stage,
                                  shared_prompt=shared, steps=a.steps)
                log(f"  losses {[None if x is None else round(x, 5) for x in v['losses']]}, {v['pairs_per_s']:.2f} pairs/s, "
                    f"peak {v['peak_memory_gb']:.2f} GB")
                variants.append(v)
    problems = check_variants(variants)
    attention = attention_kernels(paths, dtypes[0])
    log(f"attention: {attention}")
    exactness = {d: forward_against_eager(paths, d) for d in dtypes}
    log(f"log-probs against eager fp32 (max nats per answer): {exactness}")
    for d, worst in exactness.items():
        problems += [f"{d} {name} forward: log-probs {x:.3f} nats from eager fp32 attention"
                     for name, x in worst.items() if x > EAGER_TOLERANCE[d]]

    card_peak = card_bf16_peak_tflops(device) if cuda else None
    peak_dtype = "bf16" if cuda else "fp32"
    measured = measure(peak_dtype, a.threads, sizes=(4096, 8192) if cuda else (512, 1024), repeats=5) / 1e3
    report = {"device": device, "size": size, "model": {"name": model, **MODELS[model]},
              "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
              "optimizer": variants[0]["optimizer"], "attention": attention, "logps_vs_eager_fp32": exactness,
              "peak_tflops": {"card_bf16": card_peak, f"measured_{peak_dtype}_matmul": measured},
              "variants": variants, "skipped": skipped, "problems": problems}
    gc.collect()  # the variants' engines hold reference cycles: give their GPU memory back to the bench's workers
    if cuda:
        torch.cuda.empty_cache()
    write_report(a.out, report, started)  # the variants' figures survive a bench that fails or runs out of time
    if not a.skip_bench:
        log(f"bench: minidpo vs TRL, {bench_pairs} pairs, {'bf16' if cuda else 'fp32'}")
        try:
            bench = run_bench(model, bench_pairs, "bf16" if cuda else "fp32", a.threads, os.path.join(a.out, "bench"))
        except RuntimeError as e:
            problems.append(str(e).splitlines()[0])
        else:
            report["bench"] = bench_figures(bench, card_peak)
            problems += [f"bench: {x}" for x in bench["check"]["problems"]]
            if bench["exit_code"] and not bench["check"]["problems"]:
                problems.append(f"bench: exit code {bench['exit_code']}")
    write_report(a.out, report, started)
    log(f"{'all checks passed' if not problems else 'FAILED: ' + '; '.join(problems)} in {report['seconds']} s; "
        f"{os.path.join(a.out, 'gpu_check.json')}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
