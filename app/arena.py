"""A judge plays the pool against itself offline and votes into the app's votes file, so the leaderboard
(and the next round of training) works without a person.

    python -m app.arena --judge rule --n 200                        # the demo's pool, the demo's judge
    python -m app.arena --models runs/dpo,runs/sft/export --judge verify --data prompts.jsonl --n 200
    python -m app.arena --judge reward_model --reward_model DIR --n 200
    python -m app.arena --judge my_pkg.judges:factory --n 50          # factory(cfg) -> object with score()

Each battle: a prompt drawn from --data, a random pair of the pool in a random order (the arena's draw),
both answers sampled with eval's sampler (seed = the battle's number), scored by the judge
(`minidpo.iterate.judges`: score(prompt_messages, answer, record), higher is better). The vote: the
higher score wins when the two differ by more than --margin; else "both bad" when neither is above
--bad_at_most, else a tie; an answer the judge cannot score skips the battle. Votes are written exactly as
the page writes them (pairs, unpaired examples, battles with judge = the --judge name).
"""

from __future__ import annotations

from minidpo.errors import set_offline_environment

set_offline_environment()  # the entry point: before transformers is imported (no hub)

import argparse  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402

from app.compare import add_pool_args, start  # noqa: E402
from app.leaderboard import leaderboard, read_battles  # noqa: E402
from minidpo.errors import ConfigError, run_cli  # noqa: E402
from minidpo.eval.heldout import read_heldout  # noqa: E402
from minidpo.generation import DEFAULTS  # noqa: E402
from minidpo.iterate.config import IterateConfig  # noqa: E402
from minidpo.iterate.judges import make_judge  # noqa: E402
from minidpo.iterate.verifier import ifeval_prompts  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m app.arena", description=__doc__.split("\n\n")[0])
    add_pool_args(p)
    p.add_argument("--judge", default="rule",
                   help="rule (the demo's) | verify (IFEval's verifiers; --data in IFEval's format) | reward_model "
                        "| package.module:factory (factory(cfg) -> judge with score()) [%(default)s]")
    p.add_argument("--reward_model", default="", help="--judge reward_model: a sequence-classification folder")
    p.add_argument("--data", default="data/demo/heldout.jsonl", help="prompts (held-out data; IFEval's format for verify)")
    p.add_argument("--n", type=int, default=200, help="battles to play [%(default)s]")
    p.add_argument("--seed", type=int, default=0, help="draws prompts and pairs; battle k samples with seed + k")
    p.add_argument("--max_new_tokens", type=int, default=DEFAULTS.max_new_tokens, help="[%(default)s]")
    p.add_argument("--margin", type=float, default=0.0, help="a score gap above this decides a battle [%(default)s]")
    p.add_argument("--bad_at_most", type=float, default=0.0,
                   help="two answers scored at most this (and within the margin) are both bad, else a tie [%(default)s]")
    return p.parse_args(argv)


def outcome(score_a: float, score_b: float, *, margin: float = 0.0, bad_at_most: float = 0.0) -> str:
    """The vote a judge's two scores give: "A", "B", "both_bad" or "tie"."""
    if score_a - score_b > margin:
        return "A"
    if score_b - score_a > margin:
        return "B"
    return "both_bad" if max(score_a, score_b) <= bad_at_most else "tie"


def prompts(args) -> list:
    records = ifeval_prompts(args.data) if args.judge == "verify" else read_heldout(args.data)
    return [r for r in records if r.prompt_messages[-1]["role"] == "user"]


def play(comparer, judge, records: list, *, n: int, seed: int, judge_name: str, max_new_tokens: int,
         margin: float = 0.0, bad_at_most: float = 0.0, log=print) -> Counter:
    """n battles judged by `judge`, voted into the comparer's votes file. Returns the outcomes' counts."""
    rng, counts = random.Random(seed), Counter()
    d = DEFAULTS
    for k in range(n):
        record = rng.choice(records)
        messages = record.prompt_messages
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        history = [m for m in messages[:-1] if m["role"] != "system"]
        values = (max_new_tokens, d.temperature, d.top_p, d.top_k, d.repetition_penalty, seed + k)
        *_, (_, _, status, comparison) = comparer.blind(messages[-1]["content"], system, *values, history=history,
                                                        order_seed=rng.randrange(2**31))
        if comparison is None:
            log(f"battle {k + 1}: {status}")
            counts["not played"] += 1
            continue
        scores = [judge.score(messages, comparison["answers"][side], record) for side in ("A", "B")]
        if None in scores:
            counts["judge could not say"] += 1
            continue
        choice = outcome(*scores, margin=margin, bad_at_most=bad_at_most)
        status, _ = comparer.arena.vote(comparison, choice, judge=judge_name)
        counts[choice if status.startswith("**Vote saved**") else "refused (an empty or identical answer)"] += 1
        if (k + 1) % 20 == 0 or k + 1 == n:
            log(f"{k + 1}/{n} battles: {dict(counts)}")
    return counts


def main(argv=None) -> int:
    args = parse_args(argv)

    def run():
        judge = make_judge(IterateConfig(judge=args.judge, reward_model=args.reward_model))
        if judge is None:
            raise ConfigError("--judge votes: votes are a person's; pick a judge that scores answers")
        records = prompts(args)
        comparer = start(args)
        counts = play(comparer, judge, records, n=args.n, seed=args.seed, judge_name=args.judge,
                      max_new_tokens=args.max_new_tokens, margin=args.margin, bad_at_most=args.bad_at_most)
        board = leaderboard(read_battles(comparer.votes.battles_path), comparer.pool.names)
        print(f"votes -> {comparer.votes_path}, battles -> {comparer.votes.battles_path}: {dict(counts)}")
        for name, r, lo, hi, v in zip(board.names, board.rating, board.lower, board.upper, board.votes):
            print(f"  {name:<30} {r:7.1f}  [{lo:7.1f}, {hi:7.1f}]  {v} votes")

    return run_cli(run)  # bad models, data or judge: one line, exit 2


if __name__ == "__main__":
    sys.exit(main())
