"""The EMA teacher rule on real modules (the Ray-worker path is covered in the teacher-pass tests)."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from credit_plugin.workers import ema_update_


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
