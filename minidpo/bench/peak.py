"""This machine's matmul peak: the best GFLOP/s of square matmuls in the bench's dtype and threads."""

from __future__ import annotations

import argparse
import json
import os
import time


def measure(dtype: str, threads: int, sizes=(1024, 2048, 3072), repeats: int = 5) -> float:
    import torch

    torch.set_num_threads(threads)
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, dtype=torch_dtype, device=device)
        b = torch.randn(n, n, dtype=torch_dtype, device=device)
        a @ b
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            a @ b
            if device == "cuda":
                torch.cuda.synchronize()
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best / 1e9


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    print(json.dumps({"gflops": measure(a.dtype, a.threads)}))


if __name__ == "__main__":
    main()
