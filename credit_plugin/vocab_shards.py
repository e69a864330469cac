"""Top-k and full-vocabulary log-probs from vocabulary shards, without gathering the vocabulary (pure torch).

Under tensor parallelism each rank holds the logits of one contiguous vocabulary shard, ``(..., V / P)``, ids
``[start, start + V / P)``. The logit level needs, per position, log-probs normalised over the *full*
vocabulary at k ids, and the model's own top-k. Both come from per-shard work and three collectives on small
tensors (:class:`ShardCollectives`), so no rank ever holds more than its shard:

- the normaliser ``logsumexp_v z_v``: a max over shards (no gradient: the result does not depend on it), then a
  sum over shards of ``sum exp(z - max)`` (:func:`shard_logsumexp`);
- the logits at given global ids: each shard contributes the ids it owns and zero for the others, then a sum
  over shards (:func:`shard_gather`);
- the top-k: each shard's own top-k candidates (``min(k, V / P)`` with global ids), gathered from all shards
  (``P * k`` per position), then the top-k of the candidates (:func:`shard_topk`). The global top-k is among the
  candidates because each of its ids is in the top-k of its own shard.

The collectives are passed in, so the same code runs on a tensor-parallel group (the Megatron glue in
``credit_plugin.logit_megatron``) and on simulated shards in one process (the tests). The sums must carry
gradient with an identity backward (Megatron's ``reduce_from_tensor_model_parallel_region``): each rank then
gets the gradient of the loss with respect to its own shard, as Megatron's column-parallel output layer expects.
"""

from __future__ import annotations

from typing import Protocol

import torch


class ShardCollectives(Protocol):
    """The three collectives over the shards of one position set (the tensor-parallel group)."""

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over shards (differentiable; each shard's gradient is the output's)."""
        ...

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise max over shards (no gradient)."""
        ...

    def cat_last(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenation over shards, in shard order, along the last dimension: (..., n) -> (..., P * n)."""
        ...


def shard_normalizer(shard: torch.Tensor, collectives: ShardCollectives) -> tuple[torch.Tensor, torch.Tensor]:
    """The shard shifted by the full vocabulary's max, and the log of the full vocabulary's normaliser.

    ``log_softmax(logits)`` on this shard is ``shifted - log_norm[..., None]``. The gradient flows through the new
    ``shifted`` tensor, never through ``shard`` itself: verl's Megatron engine takes its own label log-probs
    after the hook with megatron-core's vocab-parallel cross-entropy, which shifts the logits in place, and a
    saved ``shard`` would then be stale in the backward.

    Args:
        shard: shape (..., V / P), this shard's logits (float32 or wider: the sum of exponentials of a large
            vocabulary loses the tail in half precision).
        collectives: the shards' collectives.

    Returns:
        ``(shifted, log_norm)`` of shapes (..., V / P) and (...); ``log_norm`` is the same on every shard. Both
        are differentiable with respect to ``shard``.
    """
    with torch.no_grad():
        top = collectives.max(shard.amax(dim=-1))
    shifted = shard - top[..., None]
    return shifted, torch.log(collectives.sum(torch.exp(shifted).sum(dim=-1)))


def shard_logsumexp(shard: torch.Tensor, collectives: ShardCollectives) -> torch.Tensor:
    """``logsumexp`` over the full vocabulary of the logits whose shard is ``shard`` (..., V / P): shape (...)."""
    with torch.no_grad():
        top = collectives.max(shard.amax(dim=-1))
    return top + torch.log(collectives.sum(torch.exp(shard - top[..., None]).sum(dim=-1)))


def shard_gather(
    shard: torch.Tensor, ids: torch.Tensor, start: int | torch.Tensor, collectives: ShardCollectives
) -> torch.Tensor:
    """The full-vocabulary logits at global ``ids``: each shard gives the ids it owns, zero for the others.

    Args:
        shard: shape (..., V / P); ids ``[start, start + V / P)``.
        ids: shape (..., k), int64, global ids in ``[0, V)``.
        start: the shard's first id (an int; or a tensor broadcasting against ``ids``).

    Returns:
        shape (..., k), ``logits[..., ids]``; differentiable with respect to ``shard``.
    """
    width = shard.shape[-1]
    local = ids - start
    owned = (local >= 0) & (local < width)
    values = shard.gather(-1, torch.where(owned, local, torch.zeros_like(local)))
    return collectives.sum(torch.where(owned, values, torch.zeros_like(values)))


def shard_log_probs_at(
    shard: torch.Tensor, ids: torch.Tensor, start: int | torch.Tensor, collectives: ShardCollectives
) -> torch.Tensor:
    """Log-probs normalised over the full vocabulary at global ``ids`` (..., k): shape (..., k), differentiable."""
    shifted, log_norm = shard_normalizer(shard, collectives)
    return shard_gather(shifted, ids, start, collectives) - log_norm[..., None]


def shard_topk(
    shard: torch.Tensor, k: int, start: int | torch.Tensor, collectives: ShardCollectives
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k of the full vocabulary from its shards (no gradient).

    Args:
        shard: shape (..., V / P).
        k: at most the full vocabulary size ``P * V / P``.
        start: the shard's first id.

    Returns:
        ``(logits, ids)``, each of shape (..., k), in descending order of the logits, the same on every shard;
        ``ids`` are global (int64).
    """
    with torch.no_grad():
        local = torch.topk(shard, min(k, shard.shape[-1]), dim=-1)
        values = collectives.cat_last(local.values)
        ids = collectives.cat_last(local.indices + start)
        if values.shape[-1] < k:
            raise ValueError(f"top-{k} of a vocabulary of {values.shape[-1]} ids")
        best = torch.topk(values, k, dim=-1)
        return best.values, ids.gather(-1, best.indices)
