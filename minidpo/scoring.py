"""Score finished responses with a causal LM: log pi(response | prompt) and DPO's implicit reward.

Used by the comparison app (which answer does the DPO model prefer, and by how much) and by
evaluation. The ids are built exactly as the trainer builds them (`minidpo.data.encode_prompt_response`:
same chat template, same end-of-turn token), so a number printed here means what `logps/chosen` means
in training.

    r(y) = beta * (log pi_policy(y | x) - log pi_reference(y | x))

is the reward a DPO policy implicitly assigns to `y` (Rafailov et al., 2023, eq. 5, up to a term that
depends only on the prompt and cancels between two answers to the same prompt).
"""

from __future__ import annotations

import torch

from minidpo.logprobs import sequence_logprobs


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def _pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


@torch.no_grad()
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
    from minidpo.data import encode_prompt_response  # the trainer's own tokenisation

    device = _model_device(model)
    pad_id = _pad_id(tokenizer)
    out: list[torch.Tensor] = []
    for start in range(0, len(responses), batch_size):
        rows = []
        for response in responses[start : start + batch_size]:
            prompt_ids, response_ids = encode_prompt_response(tokenizer, prompt_messages, response)
            prompt_ids = [int(t) for t in prompt_ids]
            response_ids = [int(t) for t in response_ids]
            if not prompt_ids:
                raise ValueError("a scored response needs at least one prompt token before it")
            rows.append((prompt_ids, response_ids))
        width = max(len(p) + len(r) for p, r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        loss_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (p, r) in enumerate(rows):
            n = len(p) + len(r)
            input_ids[i, :n] = torch.tensor(p + r, dtype=torch.long)
            attention_mask[i, :n] = 1
            loss_mask[i, len(p) : n] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        logps, _ = sequence_logprobs(logits, input_ids.to(device), loss_mask.to(device), reduction=reduction)
        out.append(logps.float().cpu())
    if not out:
        return torch.zeros(0, dtype=torch.float32)
    return torch.cat(out)


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
