"""Sample k answers per prompt from a policy with the one sampler (`minidpo.generation`: batched, KV cache).

Answer j of every prompt comes from one batched pass with seed `seed + j`: each row draws from its own
generator, so an answer depends only on (model, prompt, settings, seed), not on its batch or rank.
With several ranks the prompts are split round-robin over as many processes (one GPU each when there
are GPUs, `python -m minidpo.iterate.sampling`), and the answers put back in prompt order.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict

from minidpo.data import ChatEncoder
from minidpo.distributed import launch_env
from minidpo.generation import SamplingSettings, decode_answer, generate_ids, prompt_ids_for
from minidpo.models import load_model


def sample_shard(model_dir: str, prompts_messages: list[list[dict]], k: int, settings: SamplingSettings,
                 batch_size: int, device: str = "auto", prefix: str = "") -> list[list[str]]:
    """k answers for each prompt, in this process. `prefix`: every answer starts with this text, the model
    going on from it in its own words (its tokens follow the prompt's as if the model had written them)."""
    lm = load_model(model_dir, "policy", device=device, dtype="fp32" if device == "cpu" else "auto")
    encoder = ChatEncoder(lm.tokenizer)
    forced = lm.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    ids = [prompt_ids_for(lm.tokenizer, m, encoder) + forced for m in prompts_messages]
    answers: list[list[str]] = [[] for _ in ids]
    for j in range(k):
        s = SamplingSettings(**{**asdict(settings), "seed": settings.seed + j})
        out = generate_ids(lm.model, lm.tokenizer, ids, settings=s, stop_ids=lm.stop_ids, pad_id=lm.pad_id,
                           batch_size=batch_size)
        for i, x in enumerate(out):
            answers[i].append(decode_answer(lm.tokenizer, forced + list(x), lm.stop_ids))
    return answers


def sample_answers(model_dir: str, prompts_messages: list[list[dict]], k: int, settings: SamplingSettings, *,
                   batch_size: int = 64, nproc: int = 1, prefix: str = "") -> list[list[str]]:
    """k answers for each prompt (each starting with `prefix`); with nproc > 1 split over nproc processes."""
    if nproc == 1 or len(prompts_messages) < nproc:
        return sample_shard(model_dir, prompts_messages, k, settings, batch_size, prefix=prefix)
    import torch

    gpus = torch.cuda.device_count()
    with tempfile.TemporaryDirectory() as tmp:
        job = os.path.join(tmp, "job.json")
        with open(job, "w", encoding="utf-8") as f:
            json.dump({"model": model_dir, "prompts": prompts_messages, "k": k, "settings": asdict(settings),
                       "batch_size": batch_size, "world_size": nproc, "prefix": prefix}, f, ensure_ascii=False)
        procs = []
        for rank in range(nproc):
            env = launch_env()
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(rank % gpus)
            procs.append(subprocess.Popen([sys.executable, "-m", "minidpo.iterate.sampling", job, str(rank)], env=env))
        if any(p.wait() for p in procs):
            raise RuntimeError("a sampling process failed (its error is printed above)")
        answers: list = [None] * len(prompts_messages)
        for rank in range(nproc):
            with open(f"{job}.{rank}", encoding="utf-8") as f:
                for i, a in zip(range(rank, len(answers), nproc), json.load(f)):
                    answers[i] = a
    return answers


def _worker(argv=None) -> None:
    ap = argparse.ArgumentParser(description="one rank of minidpo.iterate's sampling (started by sample_answers)")
    ap.add_argument("job")
    ap.add_argument("rank", type=int)
    args = ap.parse_args(argv)
    with open(args.job, encoding="utf-8") as f:
        job = json.load(f)
    mine = job["prompts"][args.rank::job["world_size"]]
    answers = sample_shard(job["model"], mine, job["k"], SamplingSettings(**job["settings"]), job["batch_size"],
                           prefix=job["prefix"])
    with open(f"{args.job}.{args.rank}", "w", encoding="utf-8") as f:
        json.dump(answers, f, ensure_ascii=False)


if __name__ == "__main__":
    _worker()
