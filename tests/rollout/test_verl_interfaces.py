"""Fails loudly when verl's rollout interfaces that the hf_cpu backend implements or relies on change.

Read from verl's installed source (the vLLM files are parsed, not imported: they need vllm).
"""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import verl
from verl.workers.config import RolloutConfig
from verl.workers.rollout.base import BaseRollout, get_rollout_class
from verl.workers.rollout.replica import RolloutReplica, TokenOutput, get_rollout_replica_class

import credit_plugin.dev.rollout
from credit_plugin.dev.rollout import ROLLOUT_NAME
from credit_plugin.dev.rollout.adapter import HFCPURolloutAdapter
from credit_plugin.dev.rollout.replica import HFCPUReplica
from credit_plugin.dev.rollout.sampling import SUPPORTED_PARAMS
from credit_plugin.dev.rollout.server import HFCPUServer

VERL = Path(verl.__file__).parent


def parse(relative: str) -> ast.Module:
    return ast.parse((VERL / relative).read_text())


def function(tree: ast.AST, class_name: str, name: str) -> ast.AsyncFunctionDef | ast.FunctionDef:
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == class_name)
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name)


def arg_names(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    return [a.arg for a in fn.args.args + fn.args.kwonlyargs if a.arg != "self"]


def remote_calls(tree: ast.AST) -> dict[str, set[str]]:
    """``{method: keyword names}`` over every ``<handle>.<method>.remote(...)`` call in ``tree``."""
    calls: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "remote"
            and isinstance(node.func.value, ast.Attribute)
        ):
            calls.setdefault(node.func.value.attr, set()).update(k.arg for k in node.keywords if k.arg)
    return calls


def method_calls(tree: ast.AST, receiver: str) -> dict[str, set[str]]:
    """``{method: keyword names}`` over every ``self.<receiver>.<method>(...)`` call in ``tree``."""
    calls: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == receiver
            and getattr(node.func.value.value, "id", None) == "self"
        ):
            calls.setdefault(node.func.attr, set()).update(k.arg for k in node.keywords if k.arg)
    return calls


def accepts(fn, keywords: set[str]) -> bool:
    params = inspect.signature(fn).parameters
    return any(p.kind is p.VAR_KEYWORD for p in params.values()) or keywords <= set(params)


def test_abstract_method_sets_are_the_ones_implemented():
    assert BaseRollout.__abstractmethods__ == {"resume", "update_weights", "release"}
    assert RolloutReplica.__abstractmethods__ == {"launch_servers"}
    assert not HFCPURolloutAdapter.__abstractmethods__
    assert not HFCPUReplica.__abstractmethods__


def test_constructors_take_what_verl_passes():
    assert list(inspect.signature(BaseRollout.__init__).parameters) == [
        "self", "config", "model_config", "device_mesh", "args", "kwargs"
    ]  # fmt: skip
    assert list(inspect.signature(RolloutReplica.__init__).parameters) == [
        "self", "replica_rank", "config", "model_config", "gpus_per_node", "is_reward_model", "is_teacher_model",
        "name_suffix",
    ]  # fmt: skip
    init_model = function(parse("workers/engine_workers.py"), "ActorRolloutRefWorker", "init_model")
    built = next(
        n for n in ast.walk(init_model) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "rollout_cls"
    )
    assert accepts(HFCPURolloutAdapter.__init__, {k.arg for k in built.keywords})
    # The replica attributes launch_servers fills and LLMServerManager / CheckpointEngineManager read.
    manager = parse("workers/rollout/llm_server.py")
    read = {n.attr for n in ast.walk(manager) if isinstance(n, ast.Attribute)}
    assert {"_server_handle", "_server_address"} <= read


def test_token_output_fields():
    assert set(TokenOutput.model_fields) == {
        "token_ids", "log_probs", "routed_experts", "stop_reason", "num_preempted", "extra_fields"
    }  # fmt: skip


def test_server_generate_takes_what_the_client_sends_and_mirrors_vllm():
    client = function(parse("workers/rollout/llm_server.py"), "LLMServerClient", "generate")
    sent = remote_calls(client)["generate"]
    assert sent == {"request_id", "prompt_ids", "sampling_params", "image_data", "video_data"}
    # ray.remote() adds a _ray_trace_ctx parameter to the class it wraps (the Ray tests may run first).
    ours = [p for p in list(inspect.signature(HFCPUServer.generate).parameters)[1:] if not p.startswith("_ray")]
    assert sent <= set(ours)
    vllm = arg_names(function(parse("workers/rollout/vllm_rollout/vllm_async_server.py"), "vLLMHttpServer", "generate"))
    # priority is sent to vllm only; kv_transfer_params belongs to vLLM's prefill/decode split.
    assert vllm == ours + ["priority", "kv_transfer_params"]


def test_server_has_every_control_method_the_replica_and_trainer_call():
    replica_calls = remote_calls(ast.parse(textwrap.dedent(inspect.getsource(RolloutReplica))))
    assert set(replica_calls) == {
        "wake_up", "sleep", "abort_all_requests", "resume_generation", "clear_kv_cache", "release_kv_cache",
        "resume_kv_cache", "start_profile", "stop_profile",
    }  # fmt: skip
    for method, keywords in replica_calls.items():
        assert accepts(getattr(HFCPUServer, method), keywords), method
    # The vLLM adapter's calls besides its own weight transport; ours makes the same ones.
    vllm_adapter = remote_calls(parse("workers/rollout/vllm_rollout/vllm_rollout.py"))
    for method in {"wake_up", "sleep", "clear_kv_cache", "set_global_steps"}:
        assert method in vllm_adapter and accepts(getattr(HFCPUServer, method), vllm_adapter[method]), method


def test_worker_drives_the_adapter_as_implemented():
    update = function(parse("workers/engine_workers.py"), "ActorRolloutRefWorker", "update_weights")
    calls = method_calls(update, "rollout")
    assert set(calls) == {"resume", "update_weights"}
    assert calls["resume"] == {"tags"}
    assert calls["update_weights"] == {"peft_config", "base_sync_done", "global_steps"}
    assert accepts(HFCPURolloutAdapter.update_weights, calls["update_weights"])


def test_agent_loop_sampling_params_are_supported():
    for relative, cls, name in [
        ("trainer/ppo/v1/agent_loop_tq.py", "AgentLoopWorkerTQ", "generate_sequences"),
        ("experimental/agent_loop/agent_loop.py", "AgentLoopWorker", "generate_sequences"),
    ]:
        fn = function(parse(relative), cls, name)
        built = next(
            n.value
            for n in ast.walk(fn)
            if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "sampling_params"
        )
        keys = {k.arg for k in built.keywords}
        assert keys == {"temperature", "top_p", "top_k", "repetition_penalty", "logprobs"}, relative
        assert keys <= SUPPORTED_PARAMS


def test_rollout_config_fields_the_server_reads():
    config = RolloutConfig(name=ROLLOUT_NAME, tensor_model_parallel_size=1)
    assert config.logprobs_mode == "processed_logprobs"
    for field in [
        "temperature", "top_k", "top_p", "prompt_length", "response_length", "max_model_len", "ignore_eos", "seed",
        "max_num_seqs", "data_parallel_size", "pipeline_model_parallel_size",
    ]:  # fmt: skip
        assert hasattr(config, field), field


def test_register_fills_both_registries_idempotently():
    credit_plugin.dev.rollout.register()
    credit_plugin.dev.rollout.register()
    assert get_rollout_class(ROLLOUT_NAME, "async") is HFCPURolloutAdapter
    assert get_rollout_replica_class(ROLLOUT_NAME) is HFCPUReplica


@pytest.mark.slow  # a fresh process importing verl (about 13 s)
def test_external_module_env_var_registers_in_a_fresh_process():
    probe = (
        "import verl\n"
        "from verl.workers.rollout.base import _ROLLOUT_REGISTRY\n"
        "from verl.workers.rollout.replica import RolloutReplicaRegistry\n"
        "assert ('hf_cpu', 'async') in _ROLLOUT_REGISTRY and 'hf_cpu' in RolloutReplicaRegistry._registry\n"
    )
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "credit_plugin.dev.rollout", "VERL_USE_EXTERNAL_PLUGINS": "none"}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
