"""Negatives for the contrastive baseline: prompts of *other* prompt groups of the same batch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def group_ids(uids: Sequence | np.ndarray) -> torch.Tensor:
    """Map arbitrary hashable uids to dense group ids, shape (B,), in order of first appearance."""
    _, first, inverse = np.unique(np.asarray(uids, dtype=object).astype(str), return_index=True, return_inverse=True)
    # np.unique sorts lexicographically; renumber by first appearance so ids do not depend on uid spelling.
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return torch.as_tensor(rank[inverse.reshape(-1)], dtype=torch.long)


def negatives_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator whose draws are reproducible from ``(seed, step)`` and differ between steps."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


def sample_negatives(
    uids: Sequence | np.ndarray,
    num_negatives: int,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """Draw, for each row, K batch rows whose prompt group (uid) differs from the row's.

    The K negatives of a row come from K *distinct* other groups, drawn uniformly without replacement
    among the other groups; within a chosen group one member row is drawn uniformly (all members share
    the prompt, so which member is used only matters when prompts differ inside a group). Averaging a
    per-prompt quantity over the K negatives is therefore an unbiased estimate of its mean over the other
    prompts of the batch, with variance falling as 1/K times the finite-population correction.

    Selection is by uid, never by position, so a batch reordered by verl's balancing gets the same
    groups.

    Args:
        uids: length B, the prompt-group id of each row (verl's ``uid``).
        num_negatives: K >= 1.
        generator: source of randomness (see :func:`negatives_generator`).

    Returns:
        LongTensor of shape (B, K) with batch indices.

    Raises:
        ValueError: when the batch has fewer than 2 prompt groups, or when K exceeds the number of other
            groups of some row (a row cannot get K distinct other prompts; lower ``num_negatives``).
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    groups = group_ids(uids)
    batch_size = groups.numel()
    num_groups = int(groups.max()) + 1 if batch_size else 0
    if num_groups < 2:
        raise ValueError(
            f"the contrastive baseline needs prompts from at least 2 prompt groups (uids), got {num_groups} "
            f"in a batch of {batch_size}; raise data.train_batch_size or set credit.contrast_coef=0 (SDPO)"
        )
    if num_negatives > num_groups - 1:
        raise ValueError(
            f"num_negatives={num_negatives} exceeds the {num_groups - 1} other prompt groups available to each "
            f"sample of this batch; lower credit.num_negatives or use more prompts per step"
        )
    # A random key per (row, group), +inf on the row's own group: the K smallest keys are a uniform
    # draw without replacement among the other groups.
    keys = torch.rand(batch_size, num_groups, generator=generator)
    keys[torch.arange(batch_size), groups] = float("inf")
    chosen = keys.argsort(dim=1)[:, :num_negatives]

    counts = torch.bincount(groups, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    members = torch.argsort(groups, stable=True)
    offset = (torch.rand(batch_size, num_negatives, generator=generator) * counts[chosen]).long()
    return members[starts[chosen] + offset.clamp_max(counts[chosen] - 1)]
