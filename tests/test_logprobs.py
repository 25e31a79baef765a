"""Response log-probs against an independent full log_softmax, and the mask convention token by token."""

import pytest
import torch

import minidpo.logprobs
from minidpo.logprobs import picked_logprobs, sequence_logprobs, token_logprobs


def test_token_logprobs_equal_full_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(5, 7, 11)
    targets = torch.randint(0, 11, (5, 7))
    expected = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, targets), expected, atol=1e-6)


def test_only_response_tokens_count_and_each_is_predicted_from_the_previous_position():
    V = 6
    # one sequence: prompt [1, 2], response [3, 4], then padding 0
    input_ids = torch.tensor([[1, 2, 3, 4, 0]])
    loss_mask = torch.tensor([[0, 0, 1, 1, 0]])
    logits = torch.zeros(1, 5, V)
    # position 1 predicts token 3 (the first response token), position 2 predicts token 4
    logits[0, 1, 3] = 2.0
    logits[0, 2, 4] = 1.0
    logits[0, 0, 2] = 50.0  # the prompt token's prediction must not count
    logits[0, 3, 0] = 50.0  # nor the padding's
    logps, n = sequence_logprobs(logits, input_ids, loss_mask)
    lp = torch.log_softmax(logits, -1)
    assert n.tolist() == [2.0]
    assert logps.item() == pytest.approx((lp[0, 1, 3] + lp[0, 2, 4]).item(), rel=1e-6)
    mean, _ = sequence_logprobs(logits, input_ids, loss_mask, reduction="mean")
    assert mean.item() == pytest.approx(logps.item() / 2, rel=1e-6)


def test_bf16_logits_are_reduced_in_float32():
    torch.manual_seed(1)
    logits = torch.randn(2, 9, 50).to(torch.bfloat16)
    ids = torch.randint(0, 50, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    logps, _ = sequence_logprobs(logits, ids, mask)
    assert logps.dtype == torch.float32
    expected = torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None]).sum((1, 2))
    assert torch.allclose(logps, expected, atol=1e-4)


def test_unknown_reduction():
    with pytest.raises(ValueError, match="unknown log-prob reduction 'max'"):
        sequence_logprobs(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2), reduction="max")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_picked_logprobs_values_and_gradients_equal_autograd(monkeypatch, dtype):
    """Against log_softmax + gather in float64, with a position that predicts two targets (as the
    prompt's last token does in packed rows) and chunks that split the rows."""
    monkeypatch.setattr(minidpo.logprobs, "CHUNK_ELEMENTS", 3 * 11)  # 3 positions per chunk
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 11).to(dtype)
    source = torch.tensor([[0, 1, 1, 3], [4, 2, 2, 0]])
    targets = torch.randint(0, 11, (2, 4))
    weights = torch.randn(2, 4)

    ours = logits.clone().requires_grad_()
    out = picked_logprobs(ours, source, targets)
    (out * weights).sum().backward()

    ref = logits.double().requires_grad_()
    lp = torch.log_softmax(ref, -1)
    expected = lp[torch.arange(2)[:, None], source, targets]
    (expected * weights.double()).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), expected.detach(), atol=tol)
    assert ours.grad.dtype == dtype
    assert torch.allclose(ours.grad.double(), ref.grad, atol=tol)
