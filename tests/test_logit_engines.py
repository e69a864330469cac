"""The logit level's per-micro-batch pieces (credit_plugin.logit_engines) on a packed micro-batch laid out as
verl's FSDP engine hands it to its logits hook, with the logits of the tiny Qwen2 (real vocabulary)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import label_log_probs, random_tiny_qwen2
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import no_padding_2_padding

from credit_plugin import distill
from credit_plugin.logit_engines import (
    DISTILL_MASK,
    ROW,
    TARGET_TOPK,
    TOPK_IDS,
    LogitDistillationLoss,
    TopkRecorder,
    credit_topk_distillation,
    flat_rows,
    response_positions,
    unflat_rows,
)

K = 5
PROMPTS = [[11, 12, 13], [21, 22], [31, 32, 33, 34]]
RESPONSES = [[101, 102, 103, 104], [201, 202], [301, 302, 303]]


def _jagged(rows: list[list[int]] | list[torch.Tensor], dtype=torch.long) -> torch.Tensor:
    return torch.nested.as_nested_tensor([torch.as_tensor(row, dtype=dtype) for row in rows], layout=torch.jagged)


@pytest.fixture(scope="module")
def packed(tokenizer):
    """The micro-batch (no padding) and its packed logits (1, N, V), one forward per row, float64."""
    model = random_tiny_qwen2(len(tokenizer)).to(torch.float64).eval()
    sequences = [p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    with torch.no_grad():
        logits = torch.cat([model(torch.tensor([seq])).logits[0] for seq in sequences])[None]
    data = tu.get_tensordict(
        {
            "input_ids": _jagged(sequences),
            "prompts": _jagged(PROMPTS),
            "responses": _jagged(RESPONSES),
            "response_mask": _jagged([[1] * len(r) for r in RESPONSES]),
            ROW: torch.tensor([2, 0, 1]),
        }
    )
    return data, logits


def _response_logits(logits: torch.Tensor, row: int) -> torch.Tensor:
    start = sum(len(p) + len(r) for p, r in zip(PROMPTS[:row], RESPONSES[:row], strict=True))
    first = start + len(PROMPTS[row]) - 1
    return logits[0, first : first + len(RESPONSES[row])]


def test_response_positions_are_where_verl_predicts_each_response_token(packed):
    data, _ = packed
    labels = data["input_ids"].values()[response_positions(data) + 1]
    assert labels.tolist() == [token for response in RESPONSES for token in response]


def test_recorder_keeps_the_models_own_top_k_with_full_vocabulary_log_probs(packed):
    data, logits = packed
    recorder = TopkRecorder(K)
    assert recorder(data=data, student_logits=logits) == {}
    rows = recorder.rows(3)
    for row, position in ((2, 0), (0, 1), (1, 2)):  # rows come back by their ROW tag
        expected = torch.log_softmax(_response_logits(logits, position), -1)
        top = torch.topk(expected, K, dim=-1)
        assert torch.equal(rows["ids"][row], top.indices)
        torch.testing.assert_close(rows["topk"][row].double(), top.values, rtol=0, atol=1e-5)
        torch.testing.assert_close(
            rows["label"][row].double(), label_log_probs(_response_logits(logits, position), RESPONSES[position])
        )


def test_the_hooks_loss_is_distills_on_the_same_logits(packed):
    data, logits = packed
    data = data.clone()
    generator = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, logits.shape[-1], (len(r), K), generator=generator) for r in RESPONSES]
    targets = [torch.log_softmax(torch.randn(len(r), K + 1, generator=generator), -1)[:, :K] for r in RESPONSES]
    old = [torch.randn(len(r), generator=generator) * 0.1 - 8 for r in RESPONSES]
    mask = [[1.0] * len(RESPONSES[0]), [0.0] * len(RESPONSES[1]), [1.0] * len(RESPONSES[2])]
    data[TOPK_IDS], data[TARGET_TOPK] = flat_rows(ids), flat_rows(targets)
    data[DISTILL_MASK], data["old_log_probs"] = _jagged(mask, torch.float32), _jagged(old, torch.float32)
    assert [torch.equal(a, b) for a, b in zip(unflat_rows(data[TOPK_IDS], K), ids, strict=True)] == [True] * 3

    ppo = lambda **_: (torch.zeros(()), {})  # noqa: E731 (verl's ppo_loss, with zero advantages: zero)
    ppo.keywords = {"config": type("Config", (), {"loss_agg_mode": "token-mean"})()}
    options = {"topk": K, "add_tail": True, "alpha": 0.5, "is_clip": 2.0, "loss_scale": 1.5}
    loss_fn = LogitDistillationLoss(ppo, options)
    outputs = loss_fn(data=data, student_logits=logits.clone().requires_grad_())
    per_position = {
        key: _jagged(list(value[0].split(data["input_ids"].offsets().diff().tolist())), value.dtype)
        for key, value in outputs.items()
    }
    losses, metrics = credit_topk_distillation(None, None, per_position, data)

    for row in range(3):
        response_logits = _response_logits(logits, row)
        expected = distill.per_token_distillation_loss(
            response_logits[None],
            targets[row].double()[None],
            torch.tensor(mask[row])[None],
            topk=K,
            alpha=0.5,
            is_clip=2.0,
            log_prob=label_log_probs(response_logits, RESPONSES[row])[None],
            old_log_prob=old[row].double()[None],
            topk_indices=ids[row][None],
        )[0]
        torch.testing.assert_close(losses[row, : len(RESPONSES[row])].double(), expected, rtol=1e-5, atol=1e-9)
    assert losses[1].abs().sum() == 0, "no loss on a sample without a teacher context"
    assert float(metrics["credit/logit/divergence"].values[0]) > 0

    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=9, global_batch_size=3)
    total, _ = loss_fn.loss(per_position, data, None)
    assert float(total) == pytest.approx(float(losses.sum()) / 9 * 1.5, rel=1e-6)
    assert no_padding_2_padding(per_position["credit_distill_token"], data).sum() == 7


def test_support_overlap_is_one_before_the_first_update_and_drops_after_one(packed):
    """The support movement across mini-batches on a real tiny model: the stored support is the old pass's top-k;
    the first mini-batch's student is that policy (overlap 1, the same mass), an update later it is not.
    (A 1024-token vocabulary holds the micro-batch's ids and keeps the update fast.)"""
    data, _ = packed
    data = data.clone()
    model = random_tiny_qwen2(1024)
    sequences = [p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)]

    def forward() -> torch.Tensor:
        return torch.cat([model(torch.tensor([seq])).logits[0] for seq in sequences])[None]

    recorder = TopkRecorder(K)
    with torch.no_grad():
        recorder(data=data, student_logits=forward())
    old = recorder.rows(3)
    order = data[ROW].tolist()  # the recorder gives rows by tag; the micro-batch holds them in this order
    data[TOPK_IDS] = flat_rows([old["ids"][tag] for tag in order])
    # a target that moves the mass off the stored ids into the tail: the update must reorder the top-k
    data[TARGET_TOPK] = flat_rows([torch.full((len(RESPONSES[p]), K), math.log(1e-3)) for p in range(3)])
    data[DISTILL_MASK] = _jagged([[1.0] * len(r) for r in RESPONSES], torch.float32)
    data["old_log_probs"] = _jagged([old["label"][tag] for tag in order], torch.float32)
    ppo = lambda **_: (torch.zeros(()), {})  # noqa: E731
    ppo.keywords = {"config": type("Config", (), {"loss_agg_mode": "token-mean"})()}
    loss_fn = LogitDistillationLoss(ppo, {"topk": K, "add_tail": True, "alpha": 0.5, "is_clip": 2.0})
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)

    def mini_batch(update: bool) -> dict:
        outputs = loss_fn(data=data, student_logits=forward())
        per_position = {
            key: _jagged(list(value[0].split(data["input_ids"].offsets().diff().tolist())), value.dtype)
            for key, value in outputs.items()
        }
        _, metrics = credit_topk_distillation(None, None, per_position, data)
        if update:
            outputs["credit_distill_loss"].sum().backward()
            optimizer.step()
        return {name.rsplit("/", 1)[-1]: metric.aggregate() for name, metric in metrics.items()}

    first, second = mini_batch(update=True), mini_batch(update=False)
    assert first["support_overlap"] == 1.0 and first["support_overlap_min"] == 1.0
    old_mass = torch.cat([row.double().exp().sum(-1) for row in old["topk"]]).mean()
    assert first["student_support_mass"] == pytest.approx(float(old_mass), rel=1e-5)
    assert second["support_overlap"] < 1.0
    assert second["student_support_mass"] < first["student_support_mass"]
