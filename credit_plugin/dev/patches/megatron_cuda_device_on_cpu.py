"""Let megatron-core's ``torch.cuda.current_device()`` calls name the host on the CPU platform.

Why a patch: megatron-core 0.16.1 places tensors with ``device=torch.cuda.current_device()`` in about a hundred
places (rotary embeddings, tensor-parallel mappings and layers, attention, DDP buffers), with no device option.
On a torch build without CUDA that call can only raise. The replacement answers ``"cpu"`` instead, so those
tensors land on the host; it is installed only when ``torch.cuda.is_available()`` is False, where the original
has no working answer to keep.
"""

from __future__ import annotations

import torch
import verl

from credit_plugin.dev.patches import require_megatron, require_verl

NAME = "megatron_cuda_device_on_cpu"


def current_device() -> str:
    """The host, as ``torch.device`` and ``device=`` arguments accept it."""
    return "cpu"


current_device.credit_patch = NAME


def apply() -> None:
    """Install the replacement once (only without CUDA); raises on versions the patch was not written for."""
    require_verl(NAME, verl.__version__)
    require_megatron(NAME, "megatron-core")
    if torch.cuda.is_available() or getattr(torch.cuda.current_device, "credit_patch", None) == NAME:
        return
    torch.cuda.current_device = current_device
