"""One trainer, one run, in its own process (so peak RSS is its own):

    python -m minidpo.bench.worker --trainer minidpo|trl|naive --workload DIR --settings JSON --out RESULT.json
                                   [--order ORDER.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil

from minidpo.bench.settings import TRAINERS


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainer", required=True, choices=TRAINERS)
    p.add_argument("--workload", required=True, help="folder written by minidpo.bench.workload.build")
    p.add_argument("--settings", required=True, help="Settings as JSON")
    p.add_argument("--out", required=True)
    p.add_argument("--order", help="JSON list of batches (pair indices) to train on, in order")
    a = p.parse_args(argv)

    # torch (and all that imports it) only after OMP_NUM_THREADS is set: torch reads it when it loads
    from minidpo.bench.settings import Settings
    from minidpo.bench.workload import Workload, check_tokenization, workload_paths

    s = Settings(**json.loads(a.settings))
    os.environ["OMP_NUM_THREADS"] = str(s.threads)
    import torch

    torch.set_num_threads(s.threads)
    with open(os.path.join(a.workload, "workload.json")) as f:
        w = Workload(**{k: v for k, v in json.load(f).items() if k != "model_config"})
    paths = workload_paths(a.workload)
    order = json.load(open(a.order)) if a.order else None
    run_dir = os.path.join(os.path.dirname(os.path.abspath(a.out)), "run_" + os.path.basename(a.out)[:-5])
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun must not append to an old run's metrics
    os.makedirs(run_dir)
    if a.trainer.startswith("minidpo"):
        import functools

        from minidpo.bench import run_minidpo

        from minidpo.bench.settings import LISTWISE, LORA_R, SIMPO, listwise_settings

        over = {"loss_type": "simpo", **SIMPO} if a.trainer == "minidpo-simpo" else None
        if a.trainer in LISTWISE:
            over = listwise_settings(a.trainer, paths)
        run = functools.partial(run_minidpo.run, activation_checkpointing=int(a.trainer == "minidpo-ac"),
                                lora_r=LORA_R if a.trainer == "minidpo-lora" else 0,
                                token_budget=a.trainer == "minidpo-budget", over=over)
    elif a.trainer == "trl":
        from minidpo.bench.run_trl import run
    else:
        from minidpo.bench.run_naive import run
    result = run(paths, s, run_dir, order=order)
    tokenized = result.pop("tokenized", None)
    if tokenized is not None and order is None:  # every pipeline trains on exactly the generated token ids
        check_tokenization(w, tokenized)
    result.update(trainer=a.trainer, peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    if torch.cuda.is_available():
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    with open(a.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
