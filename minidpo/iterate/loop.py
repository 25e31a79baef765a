"""The loop: for each round, sample -> judge -> pairs -> DPO (the real trainer) -> evaluate.

    iteration folder (output_dir)/
      iterate_config.json    the settings
      round_0/eval/          the starting policy evaluated (eval_start)
      round_k/samples.jsonl  prompts, answers, scores (judge rounds)
      round_k/pairs.jsonl    the round's data, the DPO run's --data: pairs (prompt / chosen / rejected), or
                             listwise records (listwise: true), or pairs and the unpaired votes (judge=votes)
      round_k/pairs.json     counts ("pairs", or "lists"), the round's loss flags, the sampling / judging seconds
      round_k/dpo/           a normal run folder: run_config.json, TensorBoard, checkpoints, export
      round_k/eval/          `make eval`'s evaluation of the round's export against the SFT model (judge=verify:
                             IFEval's, minidpo.eval.ifeval, on the first eval_limit prompts of --heldout)
      round_k/round.json     written last: the round is finished
      summary.json, summary.md, tensorboard/

Resume is by what is on disk: a round with round.json is done; pairs.jsonl is reused; a DPO run with
checkpoints but no summary.json continues with --resume true; an eval.json is reused.

Each round's DPO runs in a subprocess through the launcher `make train` uses (`deepspeed --module
minidpo.train`): the trainer owns its process group, engines and memory, which all go away with the
process, and the same command trains on several ranks.
"""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import time
from pathlib import Path

from minidpo.config import parse_config
from minidpo.demo.judge import judge_heldout
from minidpo.distributed import launch_env, trainer_command
from minidpo.errors import ConfigError, FaultError, run_cli, set_offline_environment
from minidpo.eval.heldout import read_heldout, stratified
from minidpo.eval.ifeval import evaluate_ifeval
from minidpo.eval.run import evaluate
from minidpo.fsutil import write_jsonl_atomic, write_text_atomic
from minidpo.generation import SamplingSettings
from minidpo.iterate.config import IterateConfig, validate
from minidpo.iterate.judges import make_judge, score_all
from minidpo.iterate.lists import lists_from_scores, verify_lists, write_lists
from minidpo.iterate.pairs import ScoredPrompt, pair_record, pairs_from_scores, votes_pairs, write_pairs
from minidpo.iterate.round_loss import round_loss_flags
from minidpo.iterate.sampling import sample_answers
from minidpo.iterate.summary import eval_figures, round_line, trained_on, write_summary
from minidpo.iterate.verifier import ifeval_prompts, verify_pairs
from minidpo.iterate.votes import read_votes, unpaired_record
from minidpo.verify import read_ifeval

def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _write_json(path: Path, value) -> None:
    write_text_atomic(path, json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def of_axes(records: list, cfg: IterateConfig) -> list:
    """The records of --axes (all of them when it is empty)."""
    wanted = [a.strip() for a in cfg.axes.split(",") if a.strip()]
    if not wanted:
        return records
    present = {r.axis for r in records}
    missing = [a for a in wanted if a not in present]
    if missing:
        raise ConfigError(f"--axes {cfg.axes}: {cfg.data} has no record of axis {', '.join(missing)} "
                          f"(its axes: {', '.join(sorted(str(a) for a in present))})")
    return [r for r in records if r.axis in wanted]


def round_prompts(records: list, cfg: IterateConfig, k: int) -> list:
    """Round k's prompts: a fresh seeded draw, stratified over axis x language, or all of them."""
    if cfg.prompts_per_round == -1 or cfg.prompts_per_round >= len(records):
        return list(records)
    shuffled = list(records)
    random.Random(cfg.seed * 1000 + k).shuffle(shuffled)
    return stratified(shuffled, cfg.prompts_per_round)


def votes_round(cfg: IterateConfig, k: int, policy: str, records: list, rd: Path) -> dict:
    """judge=votes: the A/B votes as pairs, mixed with pairs from --data, and the unpaired votes (thumbs,
    both bad) as unpaired records trained with kto; ties and both-bad battles counted."""
    started = time.perf_counter()
    votes = read_votes(cfg)
    pairs, counts = votes_pairs(votes.pairs, records, cfg.votes_fraction, random.Random(cfg.seed * 1000 + k),
                                other_votes=len(votes.unpaired))
    flags = round_loss_flags(cfg, "unpaired", model=policy, data=cfg.data) if votes.unpaired else []
    write_jsonl_atomic(rd / "pairs.jsonl", [*(pair_record(p) for p in pairs), *map(unpaired_record, votes.unpaired)])
    info = {"pairs": {**counts, **votes.counts(), "skipped": 0}, "train_flags": flags,
            "seconds": {"sample": 0.0, "judge": time.perf_counter() - started}}
    _write_json(rd / "pairs.json", info)
    return info


def make_round_pairs(cfg: IterateConfig, k: int, policy: str, records: list, judge, rd: Path,
                     flags: list[str] = ()) -> dict:
    """Sample, judge and pair (or list, or take the votes); writes samples.jsonl, pairs.jsonl (the round's
    data: pairs, lists, or pairs and unpaired examples), pairs.json. flags: the round's loss flags."""
    if judge is None:  # judge=votes
        return votes_round(cfg, k, policy, records, rd)
    prompts = round_prompts(records, cfg, k)
    settings = SamplingSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                seed=cfg.seed * 1000 + k * 100)  # answer j of the round: seed + j
    started = time.perf_counter()
    answers = sample_answers(policy, [r.prompt_messages for r in prompts], cfg.samples_per_prompt, settings,
                             batch_size=cfg.sample_batch_size, nproc=cfg.nproc)
    sampled = time.perf_counter()
    flat = [(r.prompt_messages, a, r) for r, ans in zip(prompts, answers) for a in ans]
    flat_scores = score_all(judge, flat)
    n = cfg.samples_per_prompt
    groups = [ScoredPrompt(r, ans, flat_scores[i * n:(i + 1) * n]) for i, (r, ans) in enumerate(zip(prompts, answers))]
    prefilled = prefill_tied(groups, judge, lambda messages: sample_answers(
        policy, messages, 1, SamplingSettings(**{**settings.to_dict(), "seed": settings.seed + n}),
        batch_size=cfg.sample_batch_size, nproc=cfg.nproc, prefix=cfg.prefill)) if cfg.prefill else 0
    if cfg.listwise:
        lists, counts = verify_lists(groups, cfg.verify_margin, cfg.verify_edit) if cfg.judge == "verify" \
            else lists_from_scores(groups)
    elif cfg.judge == "verify":
        pairs, counts = verify_pairs(groups, cfg.verify_margin, cfg.verify_edit)
    else:
        pairs, counts = pairs_from_scores(groups)
    judged = time.perf_counter()
    write_jsonl_atomic(rd / "samples.jsonl", ({"id": g.record.id, "axis": g.record.axis, "lang": g.record.lang,
                                        "prompt": g.record.prompt_messages, "answers": g.answers, "scores": g.scores}
                                       for g in groups))
    if cfg.listwise:
        write_lists(rd / "pairs.jsonl", lists)
    else:
        write_pairs(rd / "pairs.jsonl", pairs)
        counts = counts.to_dict()
    if cfg.prefill:
        counts["prefilled"] = prefilled
    info = {"policy": policy, "sampling": settings.to_dict(), "samples_per_prompt": n, "pairs": counts,
            "train_flags": list(flags), "seconds": {"sample": sampled - started, "judge": judged - sampled}}
    _write_json(rd / "pairs.json", info)
    return info


def prefill_tied(groups: list[ScoredPrompt], judge, sample) -> int:
    """Where a prompt's scored samples all tie, one more answer, started by --prefill (`sample(messages)` ->
    one answer list per prompt), is judged and joins them; returns how many were drawn."""
    tied = [g for g in groups if len({s for s in g.scores if s is not None}) == 1]
    if not tied:
        return 0
    extra = sample([g.record.prompt_messages for g in tied])
    scores = score_all(judge, [(g.record.prompt_messages, a[0], g.record) for g, a in zip(tied, extra)])
    for g, a, s in zip(tied, extra, scores):
        g.answers.append(a[0])
        g.scores.append(s)
    return len(tied)


def train_command(cfg: IterateConfig, policy: str, reference: str, data: Path, run_dir: Path, resume: bool,
                  loss_flags: list[str] = ()) -> list[str]:
    """The trainer's command line for a round, launched as `make train` launches it; loss_flags (a
    listwise or votes round's loss, minidpo.iterate.round_loss) come after train_args, so they win."""
    cmd = trainer_command(cfg.launcher, cfg.nproc)
    if cfg.train_config:
        cmd += ["--config", cfg.train_config]
    cmd += ["--model", policy, "--data", str(data), "--output_dir", str(run_dir), "--deepspeed", cfg.deepspeed]
    if reference != policy:
        cmd += ["--ref_model", reference]
    cmd += shlex.split(cfg.train_args) + list(loss_flags)
    if resume:
        cmd += ["--resume", "true"]
    return cmd


def train_round(cfg: IterateConfig, policy: str, rd: Path, log, loss_flags: list[str] = ()) -> dict:
    """DPO of the round's data from `policy`; continues a started run. Returns the trainer's summary."""
    run_dir = rd / "dpo"
    done = _read_json(run_dir / "summary.json")
    if done:
        return {**done, "wall_seconds": 0.0, "resumed_from": "finished before"}
    latest = run_dir / "checkpoints" / "latest"
    resumed = latest.read_text().strip() if latest.is_file() else None
    reference = cfg.sft_model if cfg.reference == "sft" else policy
    cmd = train_command(cfg, policy, reference, rd / "pairs.jsonl", run_dir, resume=resumed is not None,
                        loss_flags=loss_flags)
    log(("resuming from " + resumed + ": " if resumed else "") + " ".join(shlex.quote(c) for c in cmd))
    started = time.perf_counter()
    rc = subprocess.run(cmd, env=launch_env()).returncode
    wall = time.perf_counter() - started
    summary = _read_json(run_dir / "summary.json")
    if rc != 0 or summary is None:
        raise FaultError(f"round {rd.name}: DPO training failed (exit status {rc}); its error is above. "
                           "Fix it and run again: the iteration resumes here")
    return {**summary, "wall_seconds": wall, "resumed_from": resumed}


def evaluate_round(cfg: IterateConfig, model: str, rd: Path, k: int) -> tuple[dict | None, float]:
    """`make eval`'s evaluation (demo judge) of `model` against the SFT model, or with judge=verify
    IFEval's (greedy answers to the first eval_limit prompts of --heldout); reused when done."""
    if not cfg.heldout:
        return None, 0.0
    cached = _read_json(rd / "eval" / "eval.json")
    if cached:
        return cached, 0.0
    started = time.perf_counter()
    if cfg.judge == "verify":
        result = evaluate_ifeval(cfg.sft_model, model, cfg.heldout, rd / "eval", max_new_tokens=cfg.eval_max_new_tokens,
                                 batch_size=cfg.sample_batch_size, n_kl=cfg.eval_n_kl, step=k,
                                 limit=None if cfg.eval_limit == -1 else cfg.eval_limit,
                                 sft_answers=earlier_sft_answers(rd))
        return result, time.perf_counter() - started
    result = evaluate(cfg.sft_model, model, cfg.heldout, rd / "eval", judge=judge_heldout, device="auto",
                      n_generate=cfg.eval_n_generate, n_kl=cfg.eval_n_kl, max_new_tokens=cfg.eval_max_new_tokens,
                      step=k)
    return result, time.perf_counter() - started


def earlier_sft_answers(rd: Path) -> Path | None:
    """The SFT model's greedy held-out answers from an earlier round: the same every round, so answered once."""
    for answers in sorted(rd.parent.glob("round_*/eval/answers_sft.jsonl")):
        if answers.parent.parent != rd and (answers.parent / "eval.json").is_file():
            return answers
    return None


# what may change when an iteration is continued: more rounds, where it lives, how it is run
RESUMABLE_CHANGES = {"rounds", "output_dir", "nproc", "launcher", "sample_batch_size", "reward_batch_size"}


def check_same_settings(cfg: IterateConfig, stored: dict | None) -> None:
    """A folder's rounds were made with its iterate_config.json: continuing it with other settings
    would mix two experiments in one table."""
    if not stored:
        return
    changed = sorted(k for k, v in cfg.to_dict().items() if k not in RESUMABLE_CHANGES and k in stored and stored[k] != v)
    if changed:
        raise ConfigError(f"--output_dir {cfg.output_dir} holds an iteration made with other settings "
                          f"({', '.join(f'{k}: {stored[k]!r} -> {getattr(cfg, k)!r}' for k in changed)}); "
                          "use a new --output_dir, or the same settings to continue it")


def iterate(cfg: IterateConfig, *, judge=None, log=print) -> dict:
    """Run (or continue) the iteration; returns the summary ({"rounds": rows, "stopped": message}).
    judge: a Judge object to use instead of the one `cfg.judge` names (the Python API's plug-in)."""
    validate(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_same_settings(cfg, _read_json(out / "iterate_config.json"))
    _write_json(out / "iterate_config.json", cfg.to_dict())
    if cfg.judge == "verify":  # both files in IFEval's format, checked before any model is loaded
        records = ifeval_prompts(cfg.data)
        if cfg.heldout:
            read_ifeval(cfg.heldout)
    else:
        records = read_heldout(cfg.data)
    records = of_axes(records, cfg)
    # a listwise round's loss, checked before anything is sampled
    list_flags = round_loss_flags(cfg, "lists", model=cfg.model, data=cfg.data) if cfg.listwise else []
    judge = judge if judge is not None else make_judge(cfg)
    rows: list[dict] = []
    if cfg.eval_start and cfg.heldout:
        rd = out / "round_0"
        rd.mkdir(exist_ok=True)
        log(f"round 0: evaluating the starting policy {cfg.model}")
        result, seconds = evaluate_round(cfg, cfg.model, rd, 0)
        start = {"round": 0, "label": "start", "export": cfg.model, "eval": eval_figures(result),
                 "seconds": {"eval": seconds}}
        # IFEval's figures carry the SFT model's on every row; the demo's get a row of their own
        rows += [start] if cfg.judge == "verify" else [{"round": 0, "label": "SFT", "eval": eval_figures(result, "sft")}, start]
        write_summary(out, rows, None)

    policy, stopped = cfg.model, None
    for k in range(1, cfg.rounds + 1):
        rd = out / f"round_{k}"
        finished = _read_json(rd / "round.json")
        if finished:
            log(f"round {k}: finished before ({finished['export']})")
            rows.append(finished)
            policy = finished["export"]
            continue
        rd.mkdir(exist_ok=True)
        info = _read_json(rd / "pairs.json") if (rd / "pairs.jsonl").is_file() else None
        if info is None:
            log(f"round {k}: sampling from {policy}" if judge is not None else f"round {k}: reading the votes")
            info = make_round_pairs(cfg, k, policy, records, judge, rd, list_flags)
        c = info["pairs"]
        log(f"round {k}: {round_line(c)}")
        n, unit = trained_on(c)
        if n < cfg.min_pairs:
            stopped = (f"round {k} has {n} {unit}, fewer than min_pairs={cfg.min_pairs} "
                       "(answers the judge cannot tell apart): nothing to learn, the loop stops here")
            log(f"minidpo.iterate: {stopped}")
            break
        trained = train_round(cfg, policy, rd, log, info.get("train_flags", []))
        export = trained["export"]
        result, eval_seconds = evaluate_round(cfg, export, rd, k)
        row = {"round": k, "label": f"round {k}", "policy": policy, "export": export,
               "reference": cfg.sft_model if cfg.reference == "sft" else policy, "pairs": c,
               "train": {"steps": trained["steps"], "seconds": trained["seconds"], "resumed_from": trained["resumed_from"]},
               "eval": eval_figures(result),
               "seconds": {"sample": info["seconds"]["sample"], "judge": info["seconds"]["judge"],
                           "train": trained["wall_seconds"], "eval": eval_seconds}}
        _write_json(rd / "round.json", row)
        rows.append(row)
        write_summary(out, rows, None)
        policy = export
    summary = write_summary(out, rows, stopped)
    log(f"wrote {out / 'summary.md'} and {out / 'summary.json'}")
    return summary


def main(argv=None) -> dict:
    """`python -m minidpo.iterate`: settings as flags or --config FILE; bad input is one `error:` line."""
    set_offline_environment()
    summary = {}
    code = run_cli(lambda: summary.update(
        iterate(parse_config(argv, IterateConfig, "Iterative on-policy DPO: sample, judge, train again"))))
    if code:
        raise SystemExit(code)
    return summary
