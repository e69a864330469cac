"""The batch layout ``build_log_prob_batch`` hands to verl's workers, and the errors for bad input."""

from __future__ import annotations

import pytest
import torch
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import response_from_nested

from credit_plugin.dev.cpu.workers import build_log_prob_batch, create_worker_groups

PROMPTS = [[5, 6, 7], [8]]
RESPONSES = [[1, 2], [3, 4, 9]]


def test_layout_is_the_trainers_no_padding_layout():
    batch = build_log_prob_batch(PROMPTS, RESPONSES, temperature=0.7, calculate_entropy=True)
    assert batch.batch_size == torch.Size([2])
    for key in ("input_ids", "position_ids", "prompts", "responses", "response_mask", "loss_mask"):
        assert batch[key].is_nested and batch[key].dtype == torch.int64, key
    assert [row.tolist() for row in batch["input_ids"].unbind()] == [[5, 6, 7, 1, 2], [8, 3, 4, 9]]
    assert [row.tolist() for row in batch["position_ids"].unbind()] == [[0, 1, 2, 3, 4], [0, 1, 2, 3]]
    assert [row.tolist() for row in batch["responses"].unbind()] == RESPONSES
    assert [row.tolist() for row in batch["loss_mask"].unbind()] == [[1, 1], [1, 1, 1]]
    assert tu.get(batch, "temperature") == 0.7 and tu.get(batch, "calculate_entropy") is True
    assert tu.get(batch, "compute_loss") is False


def test_response_slice_of_whole_sequence_output_is_the_response_tokens():
    """Workers return per-position values of the next token; verl's slicer must pick the response's ones."""
    batch = build_log_prob_batch(PROMPTS, RESPONSES)
    # The value at position t stands for token t + 1: shifted input ids make the slice checkable.
    shifted = torch.nested.as_nested_tensor(
        [torch.roll(row, -1) for row in batch["input_ids"].unbind()], layout=torch.jagged
    )
    sliced = response_from_nested(shifted, batch["response_mask"])
    assert [row.tolist() for row in sliced.unbind()] == RESPONSES


@pytest.mark.parametrize(
    ("prompts", "responses", "message"),
    [
        ([[1]], [[2], [3]], "1 prompts but 2 responses"),
        ([[1], []], [[2], [3]], r"samples \[1\] have an empty prompt or response"),
        ([[1], [2]], [[], [3]], r"samples \[0\] have an empty prompt or response"),
    ],
)
def test_bad_batches_name_the_samples(prompts, responses, message):
    with pytest.raises(ValueError, match=message):
        build_log_prob_batch(prompts, responses)


def test_unknown_role_is_named():
    with pytest.raises(ValueError, match=r"unknown worker roles \['critic_x'\]"):
        create_worker_groups(config=None, roles=("actor", "critic_x"))
