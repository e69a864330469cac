"""The vocabulary-shard math of the Megatron logit level (credit_plugin.vocab_shards) on P simulated
tensor-parallel shards in one process, against the full-vocabulary result: the top-k ids exactly, the
log-probs and the loss's gradient to float64 rounding."""

from __future__ import annotations

import pytest
import torch

from credit_plugin import distill
from credit_plugin.vocab_shards import (
    shard_gather,
    shard_log_probs_at,
    shard_logsumexp,
    shard_normalizer,
    shard_topk,
)

V, P, K = 96, 4, 7


class Simulated:
    """P shards as the leading dimension of every tensor; each collective is over that dimension and gives every
    shard the result, as a tensor-parallel group does. The sum's backward is the identity per shard (as
    Megatron's ``reduce_from_tensor_model_parallel_region``) when the test's loss is the mean of the P copies."""

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.sum(dim=0, keepdim=True).expand_as(tensor)

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().amax(dim=0, keepdim=True).expand_as(tensor)

    def cat_last(self, tensor: torch.Tensor) -> torch.Tensor:
        # (P, ..., n) -> every shard gets (..., P * n), shard 0's entries first
        joined = tensor.movedim(0, -2).reshape(*tensor.shape[1:-1], -1)
        return joined.expand(tensor.shape[0], *joined.shape)


def _shards(logits: torch.Tensor, parts: int = P) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., V) -> the shards (P, ..., V / P) and each shard's first id, broadcastable against (P, ..., k)."""
    width = logits.shape[-1] // parts
    shards = torch.stack(logits.split(width, dim=-1))
    starts = (torch.arange(parts) * width).reshape(parts, *([1] * logits.dim()))
    return shards, starts


@pytest.fixture
def logits() -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    # two rows of five positions, spread wide so that the max and the tail matter
    return (torch.randn(2, 5, V, generator=generator, dtype=torch.float64) * 4).requires_grad_()


def test_logsumexp_and_log_probs_at_ids_equal_the_full_vocabulary(logits):
    shards, starts = _shards(logits)
    lse = shard_logsumexp(shards, Simulated())
    for shard in range(P):
        torch.testing.assert_close(lse[shard], torch.logsumexp(logits, -1), rtol=0, atol=1e-12)
    # ids spread over every shard, repeated ones included
    ids = torch.randint(0, V, (2, 5, K), generator=torch.Generator().manual_seed(4))
    ids[..., 0] = ids[..., 1]
    got = shard_log_probs_at(shards, ids.expand(P, *ids.shape), starts, Simulated())
    want = torch.log_softmax(logits, -1).gather(-1, ids)
    for shard in range(P):
        torch.testing.assert_close(got[shard], want, rtol=0, atol=1e-12)
    shifted, log_norm = shard_normalizer(shards, Simulated())
    torch.testing.assert_close(
        torch.cat(list(shifted - log_norm[..., None]), dim=-1), torch.log_softmax(logits, -1), rtol=0, atol=1e-12
    )


def test_an_id_contributes_only_from_its_own_shard(logits):
    shards, starts = _shards(logits)
    ids = torch.tensor([0, V // P - 1, V // P, V - 1]).expand(2, 5, 4)
    got = shard_gather(shards, ids.expand(P, *ids.shape), starts, Simulated())
    torch.testing.assert_close(got[0], logits.gather(-1, ids), rtol=0, atol=0)


@pytest.mark.parametrize(("parts", "k"), [(P, K), (P, V // P), (P, V // P + 3), (2, 1), (P, V)])
def test_top_k_across_shards_is_the_full_vocabularys_top_k(logits, parts, k):
    """Each shard's own top-min(k, V/P) candidates, gathered, hold the global top-k: the same ids in the same
    order as torch.topk on the whole vocabulary, even when one shard holds all of them."""
    full = torch.topk(logits.detach(), k, dim=-1)
    shards, starts = _shards(logits.detach(), parts)
    values, ids = shard_topk(shards, k, starts, Simulated())
    for shard in range(parts):
        assert torch.equal(ids[shard], full.indices)
        assert torch.equal(values[shard], full.values)
    # all of one position's top-k in the last shard
    skewed = logits.detach().clone()
    skewed[0, 0, -k:] += 100.0
    shards, starts = _shards(skewed, parts)
    assert torch.equal(shard_topk(shards, k, starts, Simulated())[1][0], torch.topk(skewed, k, -1).indices)


def test_top_k_beyond_the_vocabulary_is_refused(logits):
    shards, starts = _shards(logits.detach())
    with pytest.raises(ValueError, match=f"top-{V + 1} of a vocabulary of {V}"):
        shard_topk(shards, V + 1, starts, Simulated())


@pytest.mark.parametrize(("add_tail", "alpha", "is_clip"), [(True, 0.5, 2.0), (False, 0.0, None), (True, 1.0, 1.5)])
def test_sharded_loss_and_its_gradient_equal_distills_on_the_full_logits(logits, add_tail, alpha, is_clip):
    """The Megatron loss path: the student's full-vocabulary log-probs at the ids from shards, then
    ``distill.per_token_topk_loss``; equals ``distill.per_token_distillation_loss`` on the full logits, and the
    gradient each shard receives is its slice of the full gradient."""
    generator = torch.Generator().manual_seed(5)
    ids = torch.topk(logits.detach() + torch.randn(2, 5, V, generator=generator, dtype=torch.float64), K).indices
    target = torch.log_softmax(torch.randn(2, 5, V, generator=generator, dtype=torch.float64) * 3, -1).gather(-1, ids)
    mask = torch.tensor([[1, 1, 1, 0, 1], [1, 0, 1, 1, 1]])
    labels = torch.randint(0, V, (2, 5), generator=generator)
    old = torch.log_softmax(logits.detach(), -1).gather(-1, labels[..., None])[..., 0] + 0.3
    log_prob = torch.log_softmax(logits.detach(), -1).gather(-1, labels[..., None])[..., 0]
    options = {"add_tail": add_tail, "alpha": alpha, "is_clip": is_clip, "log_prob": log_prob, "old_log_prob": old}

    want = distill.per_token_distillation_loss(logits, target, mask, topk=K, topk_indices=ids, **options)
    (want_grad,) = torch.autograd.grad(want.sum(), logits)

    shards, starts = _shards(logits)
    shifted, log_norm = shard_normalizer(shards, Simulated())
    student = shard_gather(shifted, ids.expand(P, *ids.shape), starts, Simulated()) - log_norm[..., None]
    got = torch.stack([distill.per_token_topk_loss(student[s], target, mask, **options) for s in range(P)])
    for shard in range(P):
        torch.testing.assert_close(got[shard], want, rtol=0, atol=1e-12)
    (got_grad,) = torch.autograd.grad(got.sum() / P, logits)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-12)
    assert want.abs().sum() > 0.1 and want_grad.abs().sum() > 0.1
