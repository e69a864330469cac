"""``torch.cpu`` plus the accelerator calls verl makes on its device module.

verl calls ``get_torch_device().<fn>()`` for memory statistics, cache control and RNG state as if the module
were ``torch.cuda``; ``torch.cpu`` has none of the memory calls. Here the host is the device: memory figures
are the process's resident set (current and peak) and the machine's RAM; cache calls do nothing (there is
no caching allocator to drain). Everything else (``is_available``, ``device_count``, ``current_device``,
``set_device``, ``synchronize``, ``Stream``, ``Event``, ...) is ``torch.cpu``'s own.
"""

from __future__ import annotations

import resource
from types import SimpleNamespace
from typing import Any

import psutil
import torch

_KIB = 1024


def __getattr__(name: str) -> Any:
    return getattr(torch.cpu, name)


def empty_cache() -> None:
    """No caching allocator on the host."""


def ipc_collect() -> None:
    """No CUDA IPC handles on the host."""


def set_per_process_memory_fraction(fraction: float, device: Any = None) -> None:
    """The host has no per-process memory cap to set."""


def reset_peak_memory_stats(device: Any = None) -> None:
    """The peak resident set of a process cannot be reset."""


def reset_accumulated_memory_stats(device: Any = None) -> None:
    """No accumulated allocator statistics on the host."""


def memory_allocated(device: Any = None) -> int:
    """Resident set size of this process in bytes."""
    return psutil.Process().memory_info().rss


def memory_reserved(device: Any = None) -> int:
    return memory_allocated(device)


def max_memory_allocated(device: Any = None) -> int:
    """Peak resident set size of this process in bytes (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _KIB


def max_memory_reserved(device: Any = None) -> int:
    return max_memory_allocated(device)


def mem_get_info(device: Any = None) -> tuple[int, int]:
    """``(free, total)`` bytes of host RAM, like ``torch.cuda.mem_get_info``."""
    memory = psutil.virtual_memory()
    return memory.available, memory.total


def get_device_properties(device: Any = None) -> SimpleNamespace:
    """The fields verl reads (``name``, ``total_memory``), for the host."""
    return SimpleNamespace(name=get_device_name(), total_memory=psutil.virtual_memory().total)


def get_device_name(device: Any = None) -> str:
    """Matches the ``"CPU"`` key of verl's peak-FLOPs table (``verl.utils.flops_counter``)."""
    return "CPU"


def manual_seed(seed: int) -> None:
    torch.manual_seed(seed)


def manual_seed_all(seed: int) -> None:
    torch.manual_seed(seed)


def get_rng_state(device: Any = None) -> torch.Tensor:
    return torch.get_rng_state()


def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
    torch.set_rng_state(state)
