"""verl's Megatron engine on the CPU platform: the mends in a fresh worker-like process, their version checks,
and the CREDIT trainer's refusals of Megatron settings it cannot serve (the TP=2 worker runs are in
``tests/integration/test_megatron_teacher.py``)."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import textwrap

import pytest
import torch
import verl
from hydra import compose, initialize_config_dir

from credit_plugin.config import CONFIG_DIR
from credit_plugin.dev import patches
from credit_plugin.dev.cpu import megatron
from credit_plugin.trainer import CreditTrainer

pytestmark = pytest.mark.skipif(not megatron.available(), reason="needs credit_plugin[megatron-cpu]")

FRESH_PROCESS = """
import torch
import verl  # the plugin comes in through VERL_USE_EXTERNAL_MODULES, as in a Ray worker
from megatron.core.tensor_parallel import random
from megatron.core.transformer import utils
from verl.workers.config import McoreEngineConfig
from verl.workers.engine import EngineRegistry

for model_type, head in (("language_model", "LMHead"), ("value_model", "ValueHead")):
    engine_cls = EngineRegistry.get_engine_cls(model_type, "megatron")
    assert engine_cls.__name__ == f"CPUMegatronEngineWith{head}"
    assert engine_cls.__mro__[1].__name__ == f"MegatronEngineWith{head}"
assert torch.cuda.current_device() == "cpu"
assert utils.get_default_causal_mask(3).device.type == "cpu"
assert McoreEngineConfig(dtype="float32").dtype == "float32"
from credit_plugin.dev.cpu.megatron import _apply_mbridge_mends  # applied when a Megatron engine builds its model

_apply_mbridge_mends()
from mbridge.core.bridge import _MODEL_REGISTRY

qwen2 = _MODEL_REGISTRY["qwen2"]
assert qwen2._OTHER_MAPPING["input_layernorm.weight"] == ["model.layers.{layer_number}.input_layernorm.weight"]
assert qwen2._MLP_MAPPING["pre_mlp_layernorm.weight"] == [
    "model.layers.{layer_number}.post_attention_layernorm.weight"
]
random.model_parallel_cuda_manual_seed(7, tp_rank=0, ep_rank=0, etp_rank=0)
before = torch.get_rng_state()
with random.get_cuda_rng_tracker().fork():
    forked = torch.rand(3)
assert torch.equal(torch.get_rng_state(), before), "fork restores the host generator"
with random.get_cuda_rng_tracker().fork():
    assert not torch.equal(torch.rand(3), forked), "the tracked state advances between forks"

from megatron.core.optimizer import clip_grads, optimizer
from verl.workers.engine.megatron import transformer_impl

# Host memory is the device's: verl's model load/offload (which fail here) move nothing.
transformer_impl.load_megatron_model_to_gpu([None], load_grad=False)
transformer_impl.offload_megatron_model_to_cpu([None])
torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
params = [torch.nn.Parameter(torch.zeros(4)) for _ in range(2)]
params[0].grad, params[1].grad = torch.tensor([3.0, 0, 0, 0]), torch.tensor([0.0, 4, 0, 0])
norm = clip_grads.get_grad_norm_fp32([p.grad for p in params], grad_stats_parallel_group=torch.distributed.group.WORLD)
assert abs(norm - 5.0) < 1e-5, norm
optimizer.clip_grad_by_total_norm_fp32(params, max_norm=10.0, total_norm=norm)
assert torch.equal(params[0].grad, torch.tensor([3.0, 0, 0, 0])), "a norm below the limit leaves the grads"
optimizer.clip_grad_by_total_norm_fp32(params, max_norm=1.0, total_norm=norm)
torch.testing.assert_close(params[1].grad, torch.tensor([0.0, 0.8, 0, 0]))
print("ok")
"""


@pytest.mark.slow  # a fresh process with megatron-core (about 15 s)
def test_fresh_cpu_process_runs_the_megatron_mends(tmp_path):
    env = {**os.environ, "VERL_PLATFORM": "cpu", "VERL_USE_EXTERNAL_MODULES": "credit_plugin"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FRESH_PROCESS)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_other_megatron_versions_are_refused_by_name(monkeypatch):
    monkeypatch.setattr(patches, "version", lambda package: {"megatron-core": "0.17.0", "mbridge": "0.15.1"}[package])
    with pytest.raises(RuntimeError, match=r"targets megatron-core .*found megatron-core 0.17.0"):
        patches.require_megatron("some_patch", "megatron-core", "mbridge")
    patches.require_megatron("some_patch", "mbridge")


def test_padded_mask_hides_future_positions_and_padded_keys():
    from credit_plugin.dev.patches.megatron_padded_mask_on_cpu import causal_padding_mask

    real = torch.tensor([[True, True, True], [True, True, False]])
    mask = causal_padding_mask(real)
    assert mask.shape == (2, 1, 3, 3)
    future = torch.tensor([[False, True, True], [False, False, True], [False, False, False]])
    assert torch.equal(mask[0, 0], future)
    assert torch.equal(mask[1, 0], future | torch.tensor([False, False, True]))


def _config(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="credit_trainer", overrides=["model_engine=megatron", *overrides])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["actor_rollout_ref.actor.megatron.dynamic_context_parallel=true"], "dynamic_context_parallel=true"),
        (["actor_rollout_ref.actor.megatron.router_replay.mode=R3"], "router_replay.mode=R3"),
        (
            ["credit.teacher=trust_region", "actor_rollout_ref.actor.megatron.pipeline_model_parallel_size=2"],
            "pipeline_model_parallel_size=1, got 2",
        ),
        (
            ["credit.teacher=trust_region", "actor_rollout_ref.ref.megatron.tensor_model_parallel_size=2"],
            "trust_region needs the ref engine sharded like the actor.*tensor_model_parallel_size: actor 1 vs ref 2",
        ),
        (
            ["credit.teacher=trust_region", "actor_rollout_ref.model.lora.rank=8"],
            "trust_region with model_engine=megatron needs a ref engine",
        ),
        (
            ["credit.teacher=ema", "actor_rollout_ref.ref.megatron.tensor_model_parallel_size=4"],
            "tensor_model_parallel_size: actor 1 vs ref 4",
        ),
    ],
)
def test_megatron_settings_the_teacher_pass_cannot_serve_fail_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        CreditTrainer(_config(*overrides))


MEGATRON_MENDS = sorted(
    module.name for module in pkgutil.iter_modules(patches.__path__) if module.name.startswith("megatron_")
)


@pytest.mark.parametrize("patch", MEGATRON_MENDS)
def test_every_megatron_mend_refuses_other_verl_versions(monkeypatch, patch):
    module = importlib.import_module(f"credit_plugin.dev.patches.{patch}")
    monkeypatch.setattr(verl, "__version__", "0.10.0")
    with pytest.raises(RuntimeError, match=rf"patch '{patch}' targets verl .*found verl 0\.10\.0"):
        module.apply()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the mend applies only without CUDA")
def test_the_checkpoint_writer_stages_and_checks_on_the_host_without_cuda():
    """megatron-core's dist-checkpoint strategies wait for CUDA and reduce in a ``device='cuda'`` tensor; under
    ``megatron_checkpoint_on_cpu`` they save host tensors, and torch's own ``cuda`` stays as it was."""
    from megatron.core.dist_checkpointing.strategies import fully_parallel, state_dict_saver
    from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync

    from credit_plugin.dev.patches import megatron_checkpoint_on_cpu

    bucket = ("file", "key", ([], [("item", torch.arange(3.0))]))
    megatron_checkpoint_on_cpu.apply()
    ((_, _, (_, staged)),) = FileSystemWriterAsync.preload_tensors([bucket], non_blocking=True)
    assert torch.equal(staged[0][1], torch.arange(3.0))
    assert state_dict_saver.torch.tensor([1], dtype=torch.int, device="cuda").device.type == "cpu"
    assert fully_parallel.torch.cuda.synchronize() is None
    with pytest.raises(AssertionError, match="not compiled with CUDA"):
        torch.cuda.synchronize()  # what the writer called: torch itself is not patched
