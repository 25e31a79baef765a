"""Iterative on-policy DPO: sample answers from the current policy, judge them, train on the policy's
own best-vs-worst pairs (or all its scored answers as lists), repeat (`make iterate`, `python -m minidpo.iterate`, or the API below).

    from minidpo.iterate import IterateConfig, iterate
    summary = iterate(IterateConfig(rounds=3, output_dir="runs/iterate"))

    config.py    IterateConfig: the loop's settings (each round's DPO settings are the trainer's run config)
    judges.py    the Judge interface (score(prompt_messages, answer, record) -> float | None), the rule
                 judge, the reward-model judge, the verifier judge; votes are a pair source instead
    verifier.py  --judge verify: IFEval-format prompts, scores = share of instructions followed, pairs
                 with a margin and the edit lever (edits.py: pure string edits that fix one instruction)
    pairs.py     best vs worst per prompt (ties skipped and counted), votes mixed with the data, pair files
    lists.py     listwise: true: all of a prompt's scored answers as one listwise record (the edit joins the list)
    votes.py     judge=votes' files: A/B pairs, unpaired votes (thumbs, both bad: trained with kto), ties counted
    round_loss.py  the loss of a listwise round (listwise_pairs / plackett_luce) or of unpaired votes (+kto)
    sampling.py  k answers per prompt with the one sampler, split over processes when there are several
    loop.py      the rounds: sample -> judge -> pairs -> DPO (subprocess, the trainer) -> eval (`make eval`'s,
                 or IFEval's for judge=verify); resume
    summary.py   the table by round: summary.md, summary.json, TensorBoard (x axis = round)
"""

from minidpo.iterate.config import IterateConfig
from minidpo.iterate.judges import Judge, RewardModelJudge, RuleJudge, make_judge
from minidpo.iterate.lists import ScoredList, lists_from_scores, verify_lists
from minidpo.iterate.loop import iterate, main
from minidpo.iterate.pairs import Pair, PairCounts, ScoredPrompt, pairs_from_scores, votes_pairs
from minidpo.iterate.verifier import VerifyJudge, ifeval_prompts, verify_pairs
from minidpo.iterate.votes import VoteFiles, read_votes

__all__ = ["IterateConfig", "Judge", "Pair", "PairCounts", "RewardModelJudge", "RuleJudge", "ScoredList",
           "ScoredPrompt", "VerifyJudge", "VoteFiles", "ifeval_prompts", "iterate", "lists_from_scores", "main",
           "make_judge", "pairs_from_scores", "read_votes", "verify_lists", "verify_pairs", "votes_pairs"]
