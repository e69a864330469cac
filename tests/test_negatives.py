"""Negatives come from other prompt groups; the contrastive baseline they give is unbiased, variance ~ 1/K."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from credit_plugin.negatives import group_ids, negatives_generator, sample_negatives


@settings(max_examples=200, deadline=None)
@given(
    layout=st.lists(st.integers(min_value=0, max_value=6), min_size=2, max_size=40),
    k=st.integers(min_value=1, max_value=6),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_negatives_never_share_the_uid_and_are_distinct_groups(layout, k, seed):
    uids = np.array([f"uid-{g}" for g in layout], dtype=object)
    num_groups = len(set(layout))
    if num_groups < 2 or k > num_groups - 1:
        with pytest.raises(ValueError):
            sample_negatives(uids, k, torch.Generator().manual_seed(seed))
        return
    negatives = sample_negatives(uids, k, torch.Generator().manual_seed(seed))
    assert negatives.shape == (len(uids), k) and negatives.dtype == torch.long
    neg_uids = uids[negatives.numpy()]
    assert not np.any(neg_uids == uids[:, None])
    for row in neg_uids:
        assert len(set(row)) == k, "the K negatives of a row come from K different groups"


def test_reproducible_per_seed_and_step_and_order_invariant_by_uid():
    uids = np.repeat(np.array(["a", "b", "c", "d"], dtype=object), 3)
    first = sample_negatives(uids, 2, negatives_generator(7, step=3))
    again = sample_negatives(uids, 2, negatives_generator(7, step=3))
    other_step = sample_negatives(uids, 2, negatives_generator(7, step=4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other_step)
    assert torch.equal(group_ids(uids), group_ids(np.repeat(np.array(["z", "y", "x", "w"], dtype=object), 3)))


def _baseline_draws(values: torch.Tensor, uids: np.ndarray, k: int, draws: int) -> torch.Tensor:
    """``draws`` independent estimates of the mean of ``values`` over the other groups, shape (draws, B)."""
    gen = torch.Generator().manual_seed(1234 + k)
    return torch.stack([values[sample_negatives(uids, k, gen)].mean(dim=1) for _ in range(draws)])


def test_baseline_is_unbiased_and_variance_falls_with_k():
    num_groups, group_size, draws = 9, 4, 4000
    uids = np.repeat(np.arange(num_groups).astype(str), group_size).astype(object)
    # One value per prompt (what the teacher assigns to a fixed response under that prompt).
    per_group = torch.linspace(-3.0, 2.0, num_groups, dtype=torch.float64) ** 2
    values = per_group.repeat_interleave(group_size)
    groups = group_ids(uids)
    target = (per_group.sum() - per_group[groups]) / (num_groups - 1)
    # Population variance over the other groups, and the exact variance of a without-replacement mean.
    others = per_group.expand(len(uids), -1)[torch.arange(num_groups).expand(len(uids), -1) != groups[:, None]]
    pop_var = others.view(len(uids), num_groups - 1).var(dim=1, unbiased=False)

    variances = {}
    for k in (1, 2, 4):
        estimates = _baseline_draws(values, uids, k, draws)
        exact_var = pop_var / k * (num_groups - 1 - k) / (num_groups - 2)
        # Mean of `draws` draws: standard error sqrt(var / draws); 5 sigma keeps the seeded test stable.
        tolerance = 5 * torch.sqrt(exact_var / draws)
        assert torch.all((estimates.mean(dim=0) - target).abs() <= tolerance)
        torch.testing.assert_close(estimates.var(dim=0), exact_var, rtol=0.15, atol=1e-6)
        variances[k] = estimates.var(dim=0).mean()
    # 1/K with the finite-population factor (8 - K) / 7: ratios 7/3 and 3.
    assert variances[1] > 2 * variances[2] and variances[2] > 2 * variances[4]


def test_single_group_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 prompt groups"):
        sample_negatives(np.array(["same"] * 8, dtype=object), 1, torch.Generator())


def test_k_larger_than_other_groups_is_a_clear_error():
    uids = np.array(["a", "a", "b", "b", "c", "c"], dtype=object)
    with pytest.raises(ValueError, match="num_negatives=3 exceeds the 2 other prompt groups"):
        sample_negatives(uids, 3, torch.Generator())
    with pytest.raises(ValueError, match="num_negatives must be >= 1"):
        sample_negatives(uids, 0, torch.Generator())
