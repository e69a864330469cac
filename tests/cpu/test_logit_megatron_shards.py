"""The Megatron logit-level hooks (credit_plugin.logit_megatron) on two real tensor-parallel ranks (gloo, CPU),
each given its vocabulary shard of known logits in the layout verl's Megatron engine hands its hook, padded
(``bshd``, the CPU worker's) and packed (``thd``, the GPU default): the recorder's top-k and log-probs, and the
loss and the gradient each rank's shard receives, against the full-vocabulary computation of the same logits.
(The TP=2 run through verl's real worker is in tests/integration/test_megatron_teacher.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from credit_plugin.dev.cpu import megatron

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not megatron.available(), reason="needs credit_plugin[megatron-cpu]"),
]

TWO_RANKS = """
import os, sys
import torch
import torch.multiprocessing as mp


def run(rank, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    from megatron.core import parallel_state as mpu

    mpu.initialize_model_parallel(tensor_model_parallel_size=2)
    from functools import partial

    from tensordict import TensorDict
    from verl.models.mcore.util import (
        postprocess_bshd_engine, postprocess_thd_engine, preprocess_bshd_engine, preprocess_thd_engine,
    )

    from credit_plugin import distill
    from credit_plugin.logit_engines import DISTILL_MASK, ROW, TARGET_TOPK, TOPK_IDS, flat_rows
    from credit_plugin.logit_megatron import MegatronLogitDistillationLoss, MegatronTopkRecorder, to_logits_layout

    def jagged(rows, dtype=torch.long):
        return torch.nested.as_nested_tensor([torch.as_tensor(r, dtype=dtype) for r in rows], layout=torch.jagged)

    prompts, responses = [[1, 2, 3], [4, 5], [6, 7, 8, 9]], [[11, 12, 13, 14], [15, 16], [17, 18, 19]]
    sequences = [p + r for p, r in zip(prompts, responses)]
    vocab, k, width = 64, 5, 32
    generator = torch.Generator().manual_seed(7)  # the same full logits on both ranks
    full_rows = [torch.randn(len(s), vocab, generator=generator) * 3 for s in sequences]
    targets = [torch.log_softmax(torch.randn(len(r), vocab, generator=generator) * 2, -1) for r in responses]
    data = TensorDict({"input_ids": jagged(sequences), "responses": jagged(responses), ROW: torch.arange(3)}, [3])
    for data_format in ("bshd", "thd"):
        nested = torch.nested.as_nested_tensor(full_rows, layout=torch.jagged)
        if data_format == "bshd":
            full = preprocess_bshd_engine(nested, pre_process=True)[0]
            mask = preprocess_bshd_engine(data["input_ids"], pre_process=True)[1]
            back = lambda out: postprocess_bshd_engine(out, mask)
        else:
            full = preprocess_thd_engine(nested, pre_process=True)[0]
            params = preprocess_thd_engine(data["input_ids"], pre_process=True)[1]
            back = lambda out: postprocess_thd_engine(out, params, data["input_ids"], 3)
        shard = full[..., rank * width : (rank + 1) * width].clone()

        recorder = MegatronTopkRecorder(k)
        output = recorder(data=data, student_logits=shard, data_format=data_format)
        recorder(data=data, model_output={key: back(value) for key, value in output.items()})
        rows = recorder.rows(3)
        for row, (sequence, response) in enumerate(zip(sequences, responses)):
            start = len(sequence) - len(response) - 1
            log_probs = torch.log_softmax(full_rows[row][start : start + len(response)], -1)
            assert torch.equal(rows["ids"][row], torch.topk(log_probs, k).indices), (data_format, row)
            torch.testing.assert_close(rows["topk"][row], log_probs.gather(-1, rows["ids"][row]), rtol=0, atol=1e-5)
            label = log_probs.gather(-1, torch.tensor(response)[:, None])[:, 0]
            torch.testing.assert_close(rows["label"][row], label, rtol=0, atol=1e-5)
        assert any((ids >= width).any() for ids in rows["ids"]) and any((ids < width).any() for ids in rows["ids"])

        batch = data.clone()
        batch[TOPK_IDS] = flat_rows(rows["ids"])
        batch[TARGET_TOPK] = flat_rows([t.gather(-1, ids) for t, ids in zip(targets, rows["ids"])])
        batch[DISTILL_MASK] = jagged([[1.0] * 4, [0.0] * 2, [1.0] * 3], torch.float32)
        batch["response_mask"] = jagged([[1] * len(r) for r in responses])
        batch["old_log_probs"] = jagged([label + 0.2 for label in rows["label"]], torch.float32)
        given = MegatronTopkRecorder(k, TOPK_IDS)  # the teacher pass's recorder: log-probs at the stored ids
        output = given(data=batch, student_logits=shard, data_format=data_format)
        given(data=batch, model_output={key: back(value) for key, value in output.items()})
        for key in ("ids", "topk", "label"):
            assert all(torch.equal(a, b) for a, b in zip(given.rows(3)[key], rows[key], strict=True)), key

        class Actor:
            loss_agg_mode = "token-mean"

        options = {"topk": k, "add_tail": True, "alpha": 0.5, "is_clip": 2.0}
        loss_fn = MegatronLogitDistillationLoss(partial(lambda **_: None, config=Actor()), options)
        shard.requires_grad_()
        per_position = loss_fn(data=batch, student_logits=shard, data_format=data_format)
        per_position["credit_distill_loss"].sum().backward()

        full = full.clone().requires_grad_()
        lay = lambda values: to_logits_layout(batch, values, data_format, full)
        want = distill.per_token_distillation_loss(
            full,
            lay(batch[TARGET_TOPK].values().reshape(-1, k)),
            lay(batch[DISTILL_MASK].values()) > 0,
            topk=k,
            alpha=0.5,
            is_clip=2.0,
            log_prob=lay(torch.cat(rows["label"])),
            old_log_prob=lay(batch["old_log_probs"].values()),
            topk_indices=lay(batch[TOPK_IDS].values().reshape(-1, k)),
        )
        want.sum().backward()
        torch.testing.assert_close(per_position["credit_distill_loss"], want, rtol=1e-4, atol=1e-6)
        slice_ = full.grad[..., rank * width : (rank + 1) * width]
        torch.testing.assert_close(shard.grad, slice_, rtol=1e-4, atol=1e-6)
        assert want.sum() > 0.05 and slice_.abs().sum() > 0.05
        if rank == 0:
            print(data_format, "loss", float(want.sum()), flush=True)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(int(sys.argv[1]),), nprocs=2)
    print("both ranks passed")
"""


def test_recorder_and_loss_on_two_vocabulary_shards_equal_the_full_vocabulary(tmp_path):
    script = tmp_path / "two_ranks.py"
    script.write_text(textwrap.dedent(TWO_RANKS))
    port = 29600 + os.getpid() % 300
    env = {**os.environ, "VERL_PLATFORM": "cpu"}
    result = subprocess.run(
        [sys.executable, str(script), str(port)], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "bshd loss" in result.stdout and "thd loss" in result.stdout and "both ranks passed" in result.stdout
