"""Let megatron-core's distributed-checkpoint writer save host tensors on the CPU platform.

Why a patch: megatron-core 0.16.1's ``dist_checkpointing`` strategies, which verl's Megatron checkpoint manager
saves and loads through (``verl/utils/megatron/dist_checkpointing.py``: torch_dist behind the fully parallel
wrapper), call CUDA with no device option: ``torch.cuda.synchronize()`` after the device-to-host copies of
``strategies/filesystem_async.py`` (``preload_tensors``) and ``strategies/async_utils.py`` (the async call), and
twice in ``strategies/fully_parallel.py``'s load; ``strategies/state_dict_saver.py`` all-reduces its metadata reuse
check in a ``device='cuda'`` tensor. On a torch build without CUDA each of these raises. There is no device work to
wait for on the host, and the reuse check's tensor can live where gloo reduces it, so this patch gives each of
those modules a view of ``torch`` whose ``cuda.synchronize`` does nothing and whose tensor factories put a
``"cuda"`` device on the host (``megatron_cuda_literals_on_cpu``'s view); everything else is torch's own. Their
``torch.cuda.current_device()`` calls answer the host through ``megatron_cuda_device_on_cpu``.

Installed only without CUDA; with CUDA the modules keep ``torch``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch
import verl

from credit_plugin.dev.patches import require_megatron, require_verl
from credit_plugin.dev.patches.megatron_cuda_literals_on_cpu import HostTorch

NAME = "megatron_checkpoint_on_cpu"
MODULES = (
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.fully_parallel",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.strategies.async_utils",
)


def synchronize(device: Any = None) -> None:
    """Nothing to wait for: without CUDA every copy the writer made is already on the host."""


class HostCuda(ModuleType):
    """``torch.cuda`` with a :func:`synchronize` that does nothing."""

    def __init__(self) -> None:
        super().__init__("torch.cuda")
        self.synchronize = synchronize

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


class CheckpointTorch(HostTorch):
    """``torch`` with host tensor factories (:class:`HostTorch`) and :class:`HostCuda` as ``cuda``."""

    credit_patch = NAME

    def __init__(self) -> None:
        super().__init__()
        self.cuda = HostCuda()


def apply() -> None:
    """Install the view once (only without CUDA); raises on versions the patch was not written for."""
    require_verl(NAME, verl.__version__)
    require_megatron(NAME, "megatron-core")
    if torch.cuda.is_available():
        return
    checkpoint_torch = CheckpointTorch()
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        if getattr(module.torch, "credit_patch", None) != NAME:
            module.torch = checkpoint_torch
