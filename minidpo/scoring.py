"""Score finished answers with a causal LM: log pi(answer | prompt), and DPO's implicit reward.

The one scoring path for eval (held-out pairs, KL), the app (implicit rewards of two answers) and
anyone scoring from Python. Ids are built exactly as the trainer builds them (`minidpo.data.ChatEncoder`:
same chat template, same end-of-turn token), padded by the data layer's `collate_pairs` and reduced by
`minidpo.logprobs.sequence_logprobs`, so a number printed here means what `logps/chosen` means in
training.

    r(y) = beta * (log pi_policy(y | x) - log pi_reference(y | x))

is the reward a DPO policy implicitly assigns to `y` (Rafailov et al., 2023, eq. 5, up to a term that
depends only on the prompt and cancels between two answers to the same prompt).
"""

from __future__ import annotations

import torch

from minidpo.data import ChatEncoder, TokenizedPair, collate_pairs
from minidpo.logprobs import sequence_logprobs, token_logprobs
from minidpo.models import pad_id


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


@torch.no_grad()
def score_rows(model, rows: list[tuple[list[int], list[int]]], pad_id: int, *, reduction: str = "sum",
               batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(response | prompt), number of response tokens) for (prompt_ids, response_ids) rows.

    Rows are sorted by length, batched and right-padded by `collate_pairs` (two rows per
    TokenizedPair with an empty shared prompt; each row's own prompt is then masked out of the
    loss mask). Returns two (len(rows),) float32 CPU tensors in the order of `rows`.
    """
    for p, _ in rows:
        if not p:
            raise ValueError("a scored response needs at least one prompt token before it")
    device = _model_device(model)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    logps, n_tokens = torch.zeros(len(rows)), torch.zeros(len(rows))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        half = -(-len(idx) // 2)
        first, second = idx[:half], idx[half:]
        if len(second) < len(first):
            second = second + [idx[-1]]  # an odd batch scores its longest row twice
        pairs = [TokenizedPair([], list(rows[a][0]) + list(rows[a][1]), list(rows[b][0]) + list(rows[b][1]))
                 for a, b in zip(first, second)]
        batch = collate_pairs(pairs, pad_id)
        which = first + second  # collate_pairs: chosen rows first, then rejected rows
        for n, i in enumerate(which):
            batch["loss_mask"][n, :len(rows[i][0])] = 0  # score the response only
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        lp, nt = sequence_logprobs(logits, batch["input_ids"].to(device), batch["loss_mask"].to(device),
                                   reduction=reduction)
        logps[which] = lp.float().cpu()
        n_tokens[which] = nt.float().cpu()
    return logps, n_tokens


def encode_responses(tokenizer, prompt_messages: list[dict], responses: list[str], encoder=None):
    """(prompt_ids, response_ids) rows for answers to one prompt, tokenized as in training."""
    encoder = encoder or ChatEncoder(tokenizer)
    return [tuple(map(list, encoder.encode_prompt_response(prompt_messages, r))) for r in responses]


def response_logprobs(
    model,
    tokenizer,
    prompt_messages: list[dict],
    responses: list[str],
    *,
    reduction: str = "sum",
    batch_size: int = 8,
) -> torch.Tensor:
    """log pi(response | prompt) for each response to one prompt.

    Args:
        model: a Hugging Face causal LM (any device / dtype); it is run in no-grad mode as it is
            (put it in eval mode yourself if it has dropout).
        tokenizer: the tokenizer the model was trained with (it carries the chat template).
        prompt_messages: the conversation before the answer, e.g.
            `[{"role": "system", "content": ...}, {"role": "user", "content": ...}]`.
        responses: assistant answers to score (plain text, without template tokens).
        reduction: "sum" (the DPO log-likelihood) or "mean" (per response token).
        batch_size: responses per forward pass; rows are right-padded to the longest in the batch.
    Returns:
        (len(responses),) float32 tensor on the CPU.
    """
    if not responses:
        return torch.zeros(0, dtype=torch.float32)
    rows = encode_responses(tokenizer, prompt_messages, responses)
    return score_rows(model, rows, pad_id(tokenizer), reduction=reduction, batch_size=batch_size)[0]


def implicit_rewards(
    policy,
    reference,
    tokenizer,
    prompt_messages: list[dict],
    responses: list[str],
    beta: float,
    *,
    reduction: str = "sum",
) -> torch.Tensor:
    """beta * log(pi_policy(y|x) / pi_reference(y|x)) for each response y; (len(responses),) float32.

    Both models must share `tokenizer` (a DPO policy and the SFT model it started from do).
    """
    policy_logps = response_logprobs(policy, tokenizer, prompt_messages, responses, reduction=reduction)
    reference_logps = response_logprobs(reference, tokenizer, prompt_messages, responses, reduction=reduction)
    return beta * (policy_logps - reference_logps)


@torch.no_grad()
def response_token_logprobs(model, tokenizer, prompt_messages: list[dict], response: str) -> tuple[list[int], torch.Tensor]:
    """(response ids, log pi(token | prompt, earlier tokens) of each): one forward pass over one answer,
    tokenized as in training (the end-of-turn token included), so the values sum to `response_logprobs`."""
    (prompt, ids), = encode_responses(tokenizer, prompt_messages, [response])
    if not prompt:
        raise ValueError("a scored response needs at least one prompt token before it")
    row = torch.tensor([prompt + ids], device=_model_device(model))
    logits = model(input_ids=row).logits
    per_token = token_logprobs(logits[:, :-1], row[:, 1:])[0, len(prompt) - 1:]
    return ids, per_token.float().cpu()


def token_rewards(policy, reference, tokenizer, prompt_messages: list[dict], response: str,
                  beta: float) -> tuple[list[int], torch.Tensor]:
    """(response ids, each token's share of the implicit reward beta * (log pi_policy - log pi_reference));
    the shares sum to `implicit_rewards` of the response. One pass of each model over the answer."""
    ids, policy_logps = response_token_logprobs(policy, tokenizer, prompt_messages, response)
    _, reference_logps = response_token_logprobs(reference, tokenizer, prompt_messages, response)
    return ids, beta * (policy_logps - reference_logps)
