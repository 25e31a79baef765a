"""SFT vs DPO, side by side: one prompt, two streamed answers, and the reward DPO implicitly gives each;
an arena over a pool of models, its leaderboard, and votes that train.

    python -m app.compare                      # runs/sft/export vs the newest runs/dpo*/export*
    python -m app.compare --sft DIR --dpo DIR  # any two models sharing a tokenizer (folders, .gguf files)
    python -m app.compare --models a,b,c       # a pool: model sources, name=source, or run folders

The app in files: compare.py (this: which models, the command line) -> pool.py (the models, loaded lazily,
evicted beyond a memory budget) -> session.py (two answers as data: texts, token counts, speed, rewards)
-> handlers.py (the side by side's handlers, thin) and battle.py (the arena's) -> layout.py (the Gradio
page) ; votes.py (where votes are saved) ; leaderboard.py (Bradley-Terry) and views.py (its HTML, the
token colours) ; arena.py (a judge plays the pool offline) ; examples.py (which example prompts) ;
pick_examples.py (measures them). Loading is `minidpo.models`, sampling `minidpo.generation`, scoring
`minidpo.scoring`: the same code as `make eval`.
"""

from __future__ import annotations

from minidpo.errors import set_offline_environment

set_offline_environment()  # the entry point: before gradio / transformers are imported (no analytics, no hub)

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from app.handlers import Comparer  # noqa: E402
from app.layout import build_app, launch_kwargs  # noqa: E402
from app.pool import Pool, default_budget_bytes, newest, pool_sources  # noqa: E402
from app.votes import DEFAULT_VOTES  # noqa: E402
from minidpo.errors import ModelError, run_cli  # noqa: E402
from minidpo.generation import DEFAULTS  # noqa: E402
from minidpo.models import DTYPE_CHOICES, check_model_folder  # noqa: E402
from minidpo.sources import hf_folder  # noqa: E402

DEFAULT_RUNS_DIR = "runs"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def resolve_model_dirs(sft: str | None = None, dpo: str | None = None, runs_dir: str = DEFAULT_RUNS_DIR):
    """(sft_dir, dpo_dir) as Paths: the given sources (resolved by `minidpo.sources.hf_folder`), or the
    defaults of a local run: SFT = `<runs_dir>/sft/export`; DPO = the newest `<runs_dir>/dpo*/export*`
    folder holding a config.json. Raises ModelError saying what to run when missing."""
    runs = Path(runs_dir)
    if sft:
        sft_dir = Path(hf_folder(sft, role="--sft"))
    else:
        sft_dir = runs / "sft" / "export"
        if not (sft_dir / "config.json").is_file():
            raise ModelError(f"no SFT model at {sft_dir}: run `make sft` first, or pass --sft DIR (SFT=DIR for make app)")
    if dpo:
        dpo_dir = Path(hf_folder(dpo, role="--dpo"))
    else:
        found = [p for p in runs.glob("dpo*/export*") if (p / "config.json").is_file()]
        if not found:
            raise ModelError(f"no DPO export under {runs}/dpo*/export*: run `make train` first, "
                             "or pass --dpo DIR (DPO=DIR for make app)")
        dpo_dir = max(found, key=lambda p: (p / "config.json").stat().st_mtime)
    return sft_dir, dpo_dir


def add_pool_args(p: argparse.ArgumentParser) -> None:
    """Which models: the pool and the side by side's default pair (shared with `python -m app.arena`)."""
    p.add_argument("--sft", metavar="DIR", help="SFT (reference) model folder or .gguf file [default: <runs_dir>/sft/export]")
    p.add_argument("--dpo", metavar="DIR", help="DPO model folder or .gguf file [default: newest <runs_dir>/dpo*/export*]")
    p.add_argument("--models", metavar="A,B,C", default="",
                   help="a pool instead of --sft/--dpo: comma-separated model sources (folders, .gguf, .pth, LoRA "
                        "adapters), name=source, or run folders (their exports, checkpoints and iterate rounds join)")
    p.add_argument("--pool_memory_gb", type=float, default=None,
                   help="evict the least recently used models beyond this much memory [default: half the machine's "
                        "memory, the GPU's on CUDA; 0: no limit]")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder, for model files that carry none")
    p.add_argument("--runs_dir", default=DEFAULT_RUNS_DIR, help="where the defaults are looked for [%(default)s]")
    p.add_argument("--beta", type=float, default=None,
                   help="β of the implicit reward [default: the DPO run's run_config.json, else 0.1]")
    p.add_argument("--votes", default=DEFAULT_VOTES, metavar="PATH",
                   help="votes JSONL file (training data); the arena's battles go to PATH's name + _battles [%(default)s]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, … [%(default)s]")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="auto = bf16/fp16 on GPU, fp32 on CPU [%(default)s]")
    p.add_argument("--allow_pickle_weights", action="store_true",
                   help="accept model folders whose weights are only a pickle pytorch_model.bin")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m app.compare",
                                description="Compare an SFT and a DPO model side by side in a local Gradio page.")
    add_pool_args(p)
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="interface to serve on [%(default)s]; 0.0.0.0 exposes the app to your network")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="[%(default)s]")
    p.add_argument("--max_new_tokens", type=int, default=DEFAULTS.max_new_tokens, help="initial slider value [%(default)s]")
    return p.parse_args(argv)


def pool_and_pair(args: argparse.Namespace) -> tuple[dict[str, str], tuple[str, str]]:
    """(name -> source, the side by side's default (left, right)). Without --models: SFT and DPO as
    always; with it, --sft / --dpo join as "SFT" / "DPO" and default the pair, else the pair is the model
    named sft (else like sft, an export before a checkpoint; else the first) against the newest of the others."""
    if not args.models:
        sft_dir, dpo_dir = resolve_model_dirs(args.sft, args.dpo, args.runs_dir)
        return {"SFT": str(sft_dir), "DPO": str(dpo_dir)}, ("SFT", "DPO")
    sources = {**({"SFT": args.sft} if args.sft else {}), **({"DPO": args.dpo} if args.dpo else {})}
    sources.update({k: v for k, v in pool_sources(args.models.split(",")).items() if v not in sources.values()})
    if len(sources) < 2:
        raise ModelError(f"--models {args.models}: a pool needs at least two models, found {len(sources)}")
    named_sft = sorted((n for n in sources if "sft" in n.lower()), key=lambda n: (n.lower() != "sft", "/" in n))
    left = "SFT" if args.sft else (named_sft or list(sources))[0]  # "sft" before sft/step_... checkpoints
    right = "DPO" if args.dpo else newest({n: p for n, p in sources.items() if n != left})
    return sources, (left, right)


def start(args: argparse.Namespace) -> Comparer:
    sources, pair = pool_and_pair(args)
    for name, source in sources.items():  # a missing or broken folder: one line now, not in the page later
        if not Path(source).is_file() and not (Path(source) / "adapter_config.json").is_file():
            check_model_folder(source, name, tokenizer=args.tokenizer)
    gb = args.pool_memory_gb
    budget = default_budget_bytes(args.device) if gb is None else gb * 2**30
    pool = Pool(sources, budget_bytes=budget, device=args.device, dtype=args.dtype, tokenizer=args.tokenizer,
                allow_pickle=args.allow_pickle_weights)
    comparer = Comparer(pool=pool, pair=pair, beta=args.beta, votes_path=args.votes)
    for name in pair:  # the default pair loads now: a model that cannot load stops here, in one line
        pool.get(name, keep=pair)
    if not comparer.shared_tokenizer:
        print("warning: the two models have different tokenizers; implicit rewards are disabled", file=sys.stderr)
    print(f"{pair[0]} {sources[pair[0]]}  vs  {pair[1]} {sources[pair[1]]}  (β = {comparer.beta:g} from "
          f"{comparer.beta_source}, votes -> {args.votes}; pool of {len(sources)}: {', '.join(sources)}; "
          f"memory budget {'none' if not budget else f'{budget / 2**30:.1f} GiB'})")
    return comparer


def main(argv=None) -> int:
    args = parse_args(argv)
    started = []
    code = run_cli(lambda: started.append(start(args)))  # bad models and settings: one line, exit 2
    if code:
        return code
    demo = build_app(started[0], default_max_new_tokens=args.max_new_tokens)
    demo.queue().launch(**launch_kwargs(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
