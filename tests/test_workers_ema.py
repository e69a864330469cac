"""The EMA teacher rule on real modules (the Ray-worker path is covered in the teacher-pass tests)."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from credit_plugin.workers import (
    ShardedSafetensorsWriter,
    ema_update_,
    has_teacher_weights,
    read_teacher_weights,
    rotate_teacher_checkpoints,
)


def _tiny() -> transformers.PreTrainedModel:
    config = transformers.Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    return transformers.Qwen2ForCausalLM(config)


def test_ema_rule_is_applied_to_every_parameter():
    torch.manual_seed(0)
    teacher, student = _tiny(), _tiny()
    before = copy.deepcopy(teacher.state_dict())
    change = ema_update_([teacher], [student], 0.05)
    assert change > 0
    for name, param in teacher.named_parameters():
        expected = 0.95 * before[name] + 0.05 * dict(student.named_parameters())[name].data
        torch.testing.assert_close(param.data, expected, rtol=0, atol=1e-7)
    assert ema_update_([teacher], [teacher], 0.5) == 0.0


def test_mismatched_layouts_are_named():
    teacher, student = _tiny(), torch.nn.Linear(2, 2)
    with pytest.raises(KeyError, match="has no actor counterpart"):
        ema_update_([teacher], [student], 0.1)
    with pytest.raises(ValueError, match="model chunks"):
        ema_update_([teacher], [], 0.1)


def test_bf16_teacher_storage_is_refused_naming_the_option():
    teacher, student = _tiny().to(torch.bfloat16), _tiny()
    with pytest.raises(ValueError, match="actor_rollout_ref.ref.fsdp_config.model_dtype=fp32"):
        ema_update_([teacher], [student], 0.05)


def test_ema_change_is_measured_without_copying_a_shard(monkeypatch):
    torch.manual_seed(0)
    teacher, student = _tiny(), _tiny()
    before = copy.deepcopy(teacher.state_dict())

    def no_clone(*args, **kwargs):
        raise AssertionError("ema_update_ copied a shard")

    monkeypatch.setattr(torch.Tensor, "clone", no_clone)
    change = ema_update_([teacher], [student], 0.05)
    monkeypatch.undo()
    students = dict(student.named_parameters())
    expected = max(float((0.05 * (students[n].data - before[n])).abs().max()) for n, _ in teacher.named_parameters())
    assert change == pytest.approx(expected, rel=1e-6)


def test_teacher_checkpoint_is_written_in_bounded_shards_and_reads_back(tmp_path):
    torch.manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(64, 64) for i in range(6)}  # 16 KiB each
    writer = ShardedSafetensorsWriter(str(tmp_path / "sharded"), max_shard_bytes=40_000)
    for name, tensor in state.items():
        writer.add(name, tensor)
    writer.close()
    assert writer.peak_bytes <= 40_000
    files = sorted(path.name for path in (tmp_path / "sharded").iterdir())
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)] + ["model.safetensors.index.json"]
    assert has_teacher_weights(str(tmp_path / "sharded"))
    read = read_teacher_weights(str(tmp_path / "sharded"))
    assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)
    single = ShardedSafetensorsWriter(str(tmp_path / "single"))
    single.add("w", state["layer0.weight"])
    single.close()
    assert sorted(path.name for path in (tmp_path / "single").iterdir()) == ["model.safetensors"]
    assert torch.equal(read_teacher_weights(str(tmp_path / "single"))["w"], state["layer0.weight"])


def test_teacher_checkpoints_rotate_with_max_actor_ckpt_to_keep(tmp_path):
    for step in (1, 2, 3, 10):
        (tmp_path / f"global_step_{step}/teacher").mkdir(parents=True)
        (tmp_path / f"global_step_{step}/actor").mkdir()
    assert rotate_teacher_checkpoints(str(tmp_path), None) == []
    removed = rotate_teacher_checkpoints(str(tmp_path), 2)
    assert sorted(removed) == sorted(str(tmp_path / f"global_step_{s}/teacher") for s in (1, 2))
    assert sorted(p.parent.name for p in tmp_path.glob("global_step_*/teacher")) == ["global_step_10", "global_step_3"]
    assert len(list(tmp_path.glob("global_step_*/actor"))) == 4, "verl's own folders are verl's to rotate"
