"""``credit.teacher=ema`` with verl's Megatron ref engine in bf16, the only precision its ``McoreEngineConfig``
accepts on GPUs (``recipes/megatron/common.yaml``): the development mend that lets fp32 through on CPU acts only
on ``float32``, so here the ref runs verl's own bf16 config while the actor stays fp32. The EMA state lives in
an fp32 copy of each TP shard inside the worker and is cast into the bf16 ref after every step."""

from __future__ import annotations

import pytest
import ray
import torch
from conftest import load_model, random_tiny_qwen2
from safetensors.torch import load_file, save_file

from credit_plugin.dev.cpu import megatron
from credit_plugin.dev.cpu.workers import compose_cpu_config, create_worker_groups, ray_init_kwargs
from credit_plugin.workers import CreditActorRolloutRefWorker

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(not megatron.available(), reason="needs credit_plugin[megatron-cpu]"),
]

VOCAB = 151936  # divisible by TP=2
RATE = 0.05  # the default rate: steps of ~1e-4 relative, below bf16's resolution (2^-8)
WORLD = 2


@pytest.fixture(scope="module")
def bf16_ref(tmp_path_factory, tokenizer):
    model_dir = tmp_path_factory.mktemp("tiny_qwen2_bf16_ref")
    random_tiny_qwen2(VOCAB).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    config = compose_cpu_config(
        str(model_dir),
        world_size=WORLD,
        config_name="credit_trainer",
        engine="megatron",
        overrides=[
            "actor_rollout_ref.actor.megatron.tensor_model_parallel_size=2",
            "actor_rollout_ref.ref.megatron.dtype=bfloat16",
            "actor_rollout_ref.actor.optim.total_training_steps=2",
            "actor_rollout_ref.rollout.name=hf_cpu",
            "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
            "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
            "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=true",
            "credit.teacher=ema",
        ],
    )
    assert config.actor_rollout_ref.ref.megatron.dtype == "bfloat16"
    ray.init(**{**ray_init_kwargs(WORLD), "num_cpus": 16})
    group = create_worker_groups(
        config, roles=("actor_rollout_ref",), worker_cls=CreditActorRolloutRefWorker, pool_name="bf16_ref_pool"
    )["actor_rollout_ref"]
    yield model_dir, group
    ray.shutdown()


def test_ema_on_a_bf16_megatron_ref_keeps_fp32_state_per_shard(bf16_ref, tmp_path):
    model_dir, group = bf16_ref
    actor = load_model(model_dir).state_dict()
    start = {name: tensor.clone() * 1.3 for name, tensor in actor.items()}
    (tmp_path / "start").mkdir()
    save_file(start, tmp_path / "start/model.safetensors")
    load_model(model_dir).config.save_pretrained(tmp_path / "start")
    group.load_teacher(str(tmp_path / "start"))

    # fp32 EMA from the bf16 weights the ref loaded, two steps: the second shows that the state carried over.
    expected = {name: start[name].to(torch.bfloat16).float() for name in start}
    for _ in range(2):
        assert max(group.update_teacher_ema(RATE)) > 0
        expected = {name: torch.lerp(value, actor[name], RATE) for name, value in expected.items()}
    group.save_teacher(str(tmp_path / "saved"))
    saved = load_file(tmp_path / "saved/model.safetensors")
    assert set(saved) - {"lm_head.weight"}
    moved = 0
    for name, tensor in saved.items():
        assert tensor.dtype == torch.bfloat16, name
        want = expected[name].to(torch.bfloat16)
        torch.testing.assert_close(tensor, want, rtol=0, atol=0, msg=name)
        moved += int(not torch.equal(tensor, start[name].to(torch.bfloat16)))
    assert moved, "the bf16 ref moved towards the actor"
