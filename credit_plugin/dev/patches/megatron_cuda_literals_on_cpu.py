"""Create megatron-core's ``device="cuda"`` literals on the host on the CPU platform.

Why a patch: megatron-core 0.16.1 creates a few tensors on a hard-coded ``device="cuda"``: the causal masks of
``megatron/core/transformer/utils.py``, the token counters of ``megatron/core/pipeline_parallel/schedules.py``,
the loss-scale tensors of ``megatron/core/optimizer/optimizer.py`` (the ``FP32Optimizer`` that fp32 training
uses), the norm and zero-count accumulators of ``megatron/core/optimizer/clip_grads.py`` and the result of
``megatron/core/utils.py``'s ``local_multi_tensor_l2_norm`` (the grad norm without apex or Transformer Engine).
Those modules look ``torch`` up at call time; on a torch build without CUDA this patch gives each of them a view
of ``torch`` whose tensor factories put a ``"cuda"`` device on the host, everything else being torch's own.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any

import torch
import verl

from credit_plugin.dev.patches import require_megatron, require_verl

NAME = "megatron_cuda_literals_on_cpu"
MODULES = (
    "megatron.core.transformer.utils",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.utils",
)
FACTORIES = ("empty", "ones", "tensor", "zeros")


def _on_host(factory):
    @functools.wraps(factory)
    def create(*args: Any, **kwargs: Any) -> torch.Tensor:
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "cuda":
            kwargs["device"] = "cpu"
        return factory(*args, **kwargs)

    return create


class HostTorch(ModuleType):
    """``torch`` with :data:`FACTORIES` creating ``"cuda"`` tensors on the host."""

    credit_patch = NAME

    def __init__(self) -> None:
        super().__init__("torch")
        for name in FACTORIES:
            setattr(self, name, _on_host(getattr(torch, name)))

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def apply() -> None:
    """Install the view once (only without CUDA); raises on versions the patch was not written for."""
    require_verl(NAME, verl.__version__)
    require_megatron(NAME, "megatron-core")
    if torch.cuda.is_available():
        return
    host_torch = HostTorch()
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        if getattr(module.torch, "credit_patch", None) != NAME:
            module.torch = host_torch
