"""A verl platform for machines without an accelerator: the host CPU is the device.

Selected only explicitly with ``VERL_PLATFORM=cpu`` (never auto-detected, so a GPU cluster's CPU-only head
node keeps verl's own choice). verl's workers still ask Ray for one ``"GPU"`` each; on a CPU machine that is
a logical resource: start Ray with ``num_gpus`` equal to the number of worker processes
(``+ray_kwargs.ray_init.num_gpus=N`` for ``main_ppo``).
"""

from __future__ import annotations

from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch
from verl.plugin.platform import PlatformBase

from credit_plugin.dev.cpu import device
from credit_plugin.registration import CPU_PLATFORM as NAME


class CPUPlatform(PlatformBase):
    """Device ``cpu`` with collectives over gloo; profiling, sync and cache hooks are no-ops."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return device

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Opt-in only: auto-detection runs where no accelerator is visible to this process,
        # which includes CPU-only actors on GPU clusters.
        return False

    def current_device(self) -> str:
        # verl passes this straight to ``.to(device=...)`` / ``torch.device(...)``; an int would name an
        # accelerator index, so answer like ``torch.cpu.current_device()``.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        pass

    def synchronize(self, device_index: int | None = None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # The variable Ray sets for the logical "GPU" resource each worker holds.
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def register_platform() -> None:
    """Add :class:`CPUPlatform` to verl's platform registry under ``cpu`` (idempotent)."""
    from verl.plugin.platform import PlatformRegistry

    if PlatformRegistry.get(NAME) is not CPUPlatform:
        PlatformRegistry.register(platform=NAME)(CPUPlatform)
