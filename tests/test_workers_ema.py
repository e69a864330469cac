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


def test_bf16_teacher_keeps_an_fp32_master_and_follows_the_fp32_ema():
    """Megatron's ref engine is bf16 (verl's McoreEngineConfig accepts nothing else on GPUs): the EMA state lives
    in an fp32 copy per shard and is cast into the bf16 teacher after every step."""
    torch.manual_seed(0)
    teacher, student = _tiny().to(torch.bfloat16), _tiny()
    reference = {name: param.data.float() for name, param in teacher.named_parameters()}
    master: dict[str, torch.Tensor] = {}
    for _ in range(20):
        with torch.no_grad():
            for param in student.parameters():
                param.add_(0.01 * torch.randn_like(param))  # the actor moves a little every step
        assert ema_update_([teacher], [student], 0.05, master) > 0
        students = dict(student.named_parameters())
        for name in reference:
            reference[name] = torch.lerp(reference[name], students[name].data, 0.05)
    for name, param in teacher.named_parameters():
        assert param.dtype == torch.bfloat16
        torch.testing.assert_close(master[f"0.{name}"], reference[name], rtol=0, atol=1e-6)
        assert torch.equal(param.data, reference[name].to(torch.bfloat16)), name
    # Without the master the same steps drift: bf16 storage loses most of each step to rounding.
    plain = _tiny().to(torch.bfloat16)
    plain.load_state_dict({name: value.to(torch.bfloat16) for name, value in reference.items()})
    before = {name: param.data.clone() for name, param in plain.named_parameters()}
    with torch.no_grad():
        for param, target in zip(plain.parameters(), student.parameters(), strict=True):
            param.lerp_(target.data.to(torch.bfloat16), 1e-3)
    unchanged = sum(int(torch.equal(before[name], param.data)) for name, param in plain.named_parameters())
    assert unchanged > 0, "a small bf16 step left whole parameters unchanged"


class _OffloadingEngine:
    """The parts of a verl engine the EMA step uses, with verl's offload behaviour: ``to("cpu")`` keeps a host
    copy and frees the parameters' storage (as Megatron's ``offload_megatron_model_to_cpu`` resizes the DDP
    buffers to 0), ``to(<device>)`` restores it. ``eval_mode`` is verl's own ``BaseEngineCtx``."""

    is_optimizer_offload_enabled = False

    def __init__(self, module, offload: bool, events: list[str], label: str):
        from types import SimpleNamespace

        self.module, self.is_param_offload_enabled = module, offload
        self.engine_config = SimpleNamespace(strategy="fsdp")
        self.events, self.label, self.host, self.mode = events, label, {}, None
        if offload:
            self.to("cpu")

    def eval_mode(self, **kwargs):
        from verl.workers.engine.base import BaseEngineCtx

        return BaseEngineCtx(self, mode="eval", **kwargs)

    def to(self, device: str, model: bool = True, optimizer: bool = True, grad: bool = True):
        if not model:
            return
        self.events.append(f"{'offload' if device == 'cpu' else 'load'} {self.label}")
        for name, param in self.module.named_parameters():
            if device == "cpu":
                self.host[name] = param.data.clone()
                param.data.untyped_storage().resize_(0)
            else:
                host = self.host[name]
                param.data.untyped_storage().resize_(host.numel() * host.element_size())
                param.data.copy_(host)


@pytest.mark.parametrize("offload", [True, False])
def test_ema_step_runs_inside_the_engines_load_offload_context(monkeypatch, offload):
    """``actor.megatron.param_offload`` / FSDP ``param_offload``: outside verl's load context the actor's shards
    have no storage; the step loads both engines (verl's ``BaseEngineCtx`` with a GPU device name), waits for
    pending device-to-host copies before reading any shard, updates, and offloads again."""
    from verl.workers.engine import base

    from credit_plugin import workers

    monkeypatch.setattr(base, "get_device_name", lambda: "cuda")  # the context's load branch, as on a GPU
    events: list[str] = []

    class Device:
        @staticmethod
        def synchronize():
            events.append("synchronize")

    monkeypatch.setattr(workers, "get_torch_device", lambda: Device)
    torch.manual_seed(0)
    teacher_module, student_module = _tiny(), _tiny()
    expected = {
        name: torch.lerp(param.data, dict(student_module.named_parameters())[name].data, 0.05)
        for name, param in teacher_module.named_parameters()
    }
    actor = _OffloadingEngine(student_module, offload, events, "actor")
    ref = _OffloadingEngine(teacher_module, offload, events, "ref")
    events.clear()
    assert workers.ema_step(actor, ref, 0.05, {}) > 0
    if offload:
        assert events == ["load actor", "load ref", "synchronize", "offload ref", "offload actor"]
        teacher_state = ref.host
        assert all(param.data.untyped_storage().size() == 0 for param in teacher_module.parameters())
    else:
        assert events == []
        teacher_state = {name: param.data for name, param in teacher_module.named_parameters()}
    for name, value in expected.items():
        torch.testing.assert_close(teacher_state[name], value, rtol=0, atol=1e-7)


def test_offloaded_shards_cannot_be_read_outside_the_load_context():
    """What the step avoids: an EMA over an offloaded actor reads freed storage."""
    events: list[str] = []
    actor = _OffloadingEngine(_tiny(), True, events, "actor")
    with pytest.raises(RuntimeError):
        ema_update_([_tiny()], [actor.module], 0.05)


def _tiny_moe(seed: int) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    config = transformers.Qwen3MoeConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        moe_intermediate_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        num_experts=4,
        num_experts_per_tok=2,
    )
    return transformers.Qwen3MoeForCausalLM(config)


def _fsdp2(model):
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    return fully_shard(model)


@pytest.fixture
def gloo_world(tmp_path):
    """A one-rank gloo process group (FSDP2 shards on the host), as verl's workers run on the CPU platform."""
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if created:
        dist.destroy_process_group()


def test_moe_ema_teacher_saves_under_module_keys_and_reloads_through_the_worker(tmp_path, gloo_world):
    """A mixture-of-experts teacher (packed expert tensors, ``mlp.experts.gate_up_proj``) on FSDP2: the worker
    writes the module's own keys (verl's per-tensor export writes per-expert keys, which the strict reload
    refuses) and reads them back on rank 0 into every shard."""
    from types import SimpleNamespace

    from credit_plugin.workers import CreditActorRolloutRefWorker

    def worker(model):
        engine = SimpleNamespace(engine_config=SimpleNamespace(strategy="fsdp"), module=model)
        return SimpleNamespace(ref=SimpleNamespace(engine=engine), role="actor_rollout_ref", _ema_master=dict)

    plain = _tiny_moe(0)
    expected = {name: tensor.clone() for name, tensor in plain.state_dict().items()}
    assert "model.layers.0.mlp.experts.gate_up_proj" in expected
    CreditActorRolloutRefWorker.save_teacher(worker(_fsdp2(plain)), str(tmp_path / "teacher"))
    saved = read_teacher_weights(str(tmp_path / "teacher"))
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[name], expected[name]) for name in expected)

    other = _fsdp2(_tiny_moe(1))
    CreditActorRolloutRefWorker.load_teacher(worker(other), str(tmp_path / "teacher"))
    from credit_plugin.workers import full_state_items

    reloaded = dict(full_state_items(other))
    for name in expected:
        torch.testing.assert_close(reloaded[name], expected[name], rtol=0, atol=0, msg=name)

    # per-expert keys (an inference engine's layout) do not load into the packed module
    per_expert = {k: v for k, v in saved.items() if "experts" not in k}
    for layer in range(2):
        for expert in range(4):
            per_expert[f"model.layers.{layer}.mlp.experts.{expert}.down_proj.weight"] = torch.zeros(16, 8)
    (tmp_path / "per_expert").mkdir()
    from safetensors.torch import save_file

    save_file(per_expert, str(tmp_path / "per_expert/model.safetensors"))
    with pytest.raises(RuntimeError):
        CreditActorRolloutRefWorker.load_teacher(worker(other), str(tmp_path / "per_expert"))
