"""The CPU platform: what verl's registry, workers and utilities ask of it, and the registration in a fresh process."""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import verl
from verl.plugin.platform import PlatformRegistry

import credit_plugin.dev.cpu
from credit_plugin.dev.cpu import device
from credit_plugin.dev.cpu.platform import CPUPlatform


def test_registered_under_cpu_and_register_is_idempotent():
    assert PlatformRegistry.get("cpu") is CPUPlatform
    credit_plugin.dev.cpu.register()
    credit_plugin.dev.cpu.register()
    assert PlatformRegistry.get("cpu") is CPUPlatform


def test_platform_answers_what_verl_asks():
    platform = CPUPlatform()
    assert (platform.device_name, platform.vendor_name) == ("cpu", "cpu")
    assert platform.device_module is device
    assert platform.communication_backend_name() == "gloo"
    assert platform.ray_resource_name() == "GPU"
    assert platform.ray_resource_options(0.5) == {"num_gpus": 0.5}
    assert platform.ray_noset_envvars() == []
    assert platform.is_available() and not platform.is_platform_available(use_smi_check=True)
    assert not platform.is_ipc_supported() and platform.cudart() is None
    assert platform.get_device_capability() == (None, None)
    # verl uses current_device() as a device argument: .to(...), torch.device(...), tensor(device=...).
    assert torch.ones(2).to(device=platform.current_device()).device.type == "cpu"
    assert torch.device(platform.current_device()).type == "cpu"
    with platform.nvtx_range("step"):
        platform.synchronize()
        platform.empty_cache()
        platform.set_device(0)


def _calls_on_device_module() -> set[str]:
    """Names verl calls on its device module: ``get_torch_device().<name>``, ``<var>.<name>(`` after ``<var> = ...``."""
    root = Path(verl.__file__).parent
    names: set[str] = set()
    for path in root.rglob("*.py"):
        text = path.read_text()
        names.update(re.findall(r"get_torch_device\(\)\.(\w+)", text))
        for var in set(re.findall(r"^\s*(\w+) = get_torch_device\(\)\s*$", text, flags=re.M)):
            names.update(re.findall(rf"\b{var}\.(\w+)\(", text))
    return names


def test_device_module_has_every_call_verl_makes():
    names = _calls_on_device_module()
    assert {"empty_cache", "mem_get_info", "max_memory_allocated", "synchronize"} <= names
    missing = sorted(name for name in names if not hasattr(device, name))
    assert not missing, f"verl calls get_torch_device().{missing} which the CPU device module lacks"


def test_memory_calls_report_host_memory():
    from verl.utils.flops_counter import get_device_flops

    assert device.memory_allocated() > 0 and device.memory_reserved() > 0
    assert device.max_memory_allocated() >= device.memory_allocated() * 0.5
    free, total = device.mem_get_info()
    assert 0 < free <= total == device.get_device_properties().total_memory
    assert math.isfinite(get_device_flops(device_name=device.get_device_name()))
    state = device.get_rng_state()
    first = torch.rand(3)
    device.set_rng_state(state)
    assert torch.equal(torch.rand(3), first)


@pytest.mark.parametrize("patch", ["gloo_backend_on_cpu", "unpinned_offload_on_cpu"])
def test_patches_refuse_other_verl_versions(monkeypatch, patch):
    import importlib

    module = importlib.import_module(f"credit_plugin.dev.patches.{patch}")
    monkeypatch.setattr(verl, "__version__", "0.10.0")
    with pytest.raises(RuntimeError, match=rf"patch '{patch}' targets verl .*found verl 0\.10\.0"):
        module.apply()


FRESH_PROCESS = """
import torch.distributed as dist
import verl
from verl.plugin.platform import get_platform
from verl.workers import engine_workers
from verl.workers.engine import EngineRegistry
from verl.workers.engine.fsdp import transformer_impl

assert type(get_platform()).__name__ == "CPUPlatform", get_platform()
assert transformer_impl.device_name == "cpu"
for model_type, cls in (("language_model", "FSDPEngineWithLMHead"), ("value_model", "FSDPEngineWithValueHead")):
    for backend in ("fsdp", "fsdp2"):
        assert EngineRegistry.get_engine_cls(model_type, backend).__name__ == cls
engine_workers.initialize_global_process_group_ray(timeout_second=60)
assert dist.get_backend() == "gloo"
tensor = torch.ones(2)
dist.all_reduce(tensor)
assert tensor.tolist() == [1.0, 1.0]
assert transformer_impl.CPUOffloadPolicy(pin_memory=True).pin_memory is False
print("ok")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # a fresh process with verl and gloo (about 14 s)
def test_fresh_process_selects_cpu_registers_engines_and_starts_gloo(tmp_path):
    """What a Ray worker sees: ``import verl`` alone (the plugin comes in through the environment) is enough."""
    env = {
        **os.environ,
        "VERL_PLATFORM": "cpu",
        "VERL_USE_EXTERNAL_MODULES": "credit_plugin",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    script = "import torch\n" + textwrap.dedent(FRESH_PROCESS)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
