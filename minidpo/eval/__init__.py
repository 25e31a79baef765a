"""Evaluate a DPO model against the SFT model it started from, on held-out preference pairs.

    python -m minidpo.eval --sft runs/sft/export --dpo runs/dpo/export --data data/demo/heldout.jsonl \\
        --output_dir runs/dpo/eval --judge minidpo.demo.judge:judge_heldout

or `evaluate(sft, dpo, heldout_path, out_dir, judge=..., n_generate=160, ...)`. Measurements:

1. Preference accuracy on the held-out pairs (no sampling): how often the DPO model's implicit reward
   beta * (log pi_dpo(y|x) - log pi_sft(y|x)) ranks chosen above rejected, and each model's own
   log pi ranking (sum and per token). beta comes from the DPO run's run_config.json unless given.
2. Behaviour, when a judge is passed in (the demo brings `minidpo.demo.judge.judge_heldout`): both
   models answer held-out prompts with the one sampler (`minidpo.generation`, same seed and settings);
   rates with counts per axis, per axis and language, and overall.
3. KL(pi_dpo || pi_sft), sequence level: the mean over answers y ~ pi_dpo(.|x) (temperature 1, no
   filters) of log pi_dpo(y|x) - log pi_sft(y|x), with its standard error. Sampled ids are scored as
   they are; answers cut at the token limit make it the KL over their first tokens (never larger).
4. A side-by-side table of sample answers.

    heldout.py  held-out pairs in every format the trainer reads, stratified sampling over axis x language
    metrics.py  preference accuracy, judge tables, KL
    report.py   eval.md, eval.json, TensorBoard scalars (eval/implicit_reward_accuracy, eval/judge/<axis>/dpo, ...)
    run.py      evaluate(): load (minidpo.models), score (minidpo.scoring), sample (minidpo.generation)
    cli.py      python -m minidpo.eval
"""

from minidpo.eval.cli import main
from minidpo.eval.heldout import HeldoutPair, read_heldout, stratified
from minidpo.eval.run import EvalSettings, Judge, evaluate

__all__ = ["EvalSettings", "HeldoutPair", "Judge", "evaluate", "main", "read_heldout", "stratified"]
