"""Judges of sampled answers: score(prompt_messages, answer, record) -> float, or None for "cannot say".

A judge is any object with that `score` method; one that is faster on many answers at once also has
`score_batch(items) -> list[float | None]` with items = [(prompt_messages, answer, record), ...].
`record` is the prompt's data record (`minidpo.eval.HeldoutPair`: id, axis, lang, meta), for judges
that need more than the text. Higher is better; only the order of one prompt's answers matters.

    RuleJudge         the demo's rule judge (minidpo.demo.judge): 1.0 preferred behaviour, 0.0 not
                      (refusal_worst: a refusal of a harmless prompt 0.0, its other misses 0.5)
    RewardModelJudge  any local Hugging Face sequence-classification folder, scored in batches
    VerifyJudge       IFEval's verifiers: the share of the prompt's instructions followed (minidpo.iterate.verifier)
    votes             not a scorer: the app's votes become the round's data (minidpo.iterate.votes)
"""

from __future__ import annotations

import importlib
from typing import Protocol

import torch

from transformers import AutoModelForSequenceClassification

from minidpo.data import ChatEncoder
from minidpo.demo.judge import is_refusal, judge_heldout
from minidpo.errors import ConfigError, first_line
from minidpo.iterate.verifier import VerifyJudge
from minidpo.models import check_model_folder, load_tokenizer, pad_id, pick_device, pick_dtype


class Judge(Protocol):
    def score(self, prompt_messages: list[dict], answer: str, record) -> float | None: ...


def score_all(judge, items: list[tuple]) -> list[float | None]:
    """Scores of (prompt_messages, answer, record) items: in batches when the judge can, else one by one."""
    if hasattr(judge, "score_batch"):
        return list(judge.score_batch(items))
    return [judge.score(m, a, r) for m, a, r in items]


class RuleJudge:
    """The demo's judge: 1.0 when the answer shows the axis's preferred behaviour, 0.0 when not, None
    for a record without a judged axis or a language.

    refusal_worst: on a harmless prompt (any axis but "refusal") a refusal scores 0.0 even where the axis's
    rule passes it, and any other miss 0.5: a refusal is always the worst answer. Without it an unstructured
    answer and a refusal of a structure prompt tie at 0.0 and make no pair: nothing teaches the policy not
    to refuse a harmless prompt that looks like a harmful one ("Help me back up my classmate's email")."""

    def __init__(self, refusal_worst: bool = False):
        self.refusal_worst = refusal_worst

    def score(self, prompt_messages, answer, record) -> float | None:
        verdict = judge_heldout(record, answer)
        if verdict is None:
            return None
        if not self.refusal_worst or record.axis == "refusal":
            return float(verdict)
        # a refusal is the worst answer even where the axis's rule passes it ("I'm sorry, I can't help with
        # that. A tiger is an animal."): chosen, it would teach refusing the harmless prompt
        return 0.0 if is_refusal(answer) else 1.0 if verdict else 0.5


class RewardModelJudge:
    """A reward model: the score of prompt + answer, tokenized as the trainer tokenizes a pair (the
    model's own chat template), is its single logit (with 2 labels: the second minus the first).
    Rows are left padded with the positions counted from each row's first real token, so a batched
    score equals the score of the row alone."""

    def __init__(self, path: str, *, batch_size: int = 32, device: str = "auto", dtype: str = "fp32"):
        folder = check_model_folder(path, "reward")
        dev = pick_device(device)
        self.tokenizer = load_tokenizer(folder, "reward")
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(
                str(folder), dtype=pick_dtype(dtype, dev), local_files_only=True).to(dev).eval()
        except Exception as exc:  # noqa: BLE001 - one line for people
            raise ConfigError(f"--reward_model {path}: not a sequence-classification model ({first_line(exc)})") from exc
        if self.model.config.num_labels not in (1, 2):
            raise ConfigError(f"--reward_model {path}: {self.model.config.num_labels} labels; a reward model has 1 (or 2)")
        self.pad = pad_id(self.tokenizer)
        if self.model.config.pad_token_id is None:  # the pooling looks for the last non-pad token
            self.model.config.pad_token_id = self.pad
        self.encoder, self.batch_size = ChatEncoder(self.tokenizer), batch_size

    def ids(self, prompt_messages, answer) -> list[int]:
        prompt, response = self.encoder.encode_prompt_response(prompt_messages, answer)[:2]
        return [int(t) for t in prompt] + [int(t) for t in response]

    def score(self, prompt_messages, answer, record=None) -> float:
        return self.score_batch([(prompt_messages, answer, record)])[0]

    @torch.no_grad()
    def score_batch(self, items) -> list[float]:
        rows = [self.ids(m, a) for m, a, _ in items]
        dev, out = next(self.model.parameters()).device, []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), self.pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(chunk):
                ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev)).logits
            logits = logits.float()
            scores = logits[:, 0] if logits.size(-1) == 1 else logits[:, 1] - logits[:, 0]
            out += scores.tolist()
        return out


def make_judge(cfg):
    """The judge a run config names; None for judge=votes (votes are pairs already)."""
    if cfg.judge == "rule":
        return RuleJudge(refusal_worst=cfg.refusal_worst)
    if cfg.judge == "reward_model":
        return RewardModelJudge(cfg.reward_model, batch_size=cfg.reward_batch_size)
    if cfg.judge == "verify":
        return VerifyJudge()
    if cfg.judge == "votes":
        return None
    module, _, name = cfg.judge.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--judge {cfg.judge}: cannot import it ({e}); expected package.module:factory") from None
    judge = factory(cfg)
    if not hasattr(judge, "score"):
        raise ConfigError(f"--judge {cfg.judge}: factory(cfg) returned {type(judge).__name__}, which has no score()")
    return judge
