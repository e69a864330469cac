"""Keep mbridge's freshly built Megatron model chunks on the host on the CPU platform.

Why a patch: mbridge 0.15.1's ``get_model`` (``mbridge/core/util.py``, imported by ``mbridge/core/bridge.py``)
moves every chunk with ``model_module.cuda(torch.cuda.current_device())`` between building and wrapping it, with
no option to skip that short of its FSDP2 path. The wrapper installed as ``mbridge.core.bridge.get_model`` makes
``nn.Module.cuda`` return the module unchanged for the duration of the call when the device is ``cpu`` (the
parameters were created on the host), and restores it afterwards.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import verl
from torch import nn
from verl.utils.device import get_device_name

from credit_plugin.dev.patches import require_megatron, require_verl

NAME = "megatron_build_on_cpu"


@contextmanager
def _modules_stay_on_host():
    original = nn.Module.cuda
    nn.Module.cuda = lambda module, device=None: module
    try:
        yield
    finally:
        nn.Module.cuda = original


def _built_on_host(original):
    @functools.wraps(original)
    def get_model(*args, **kwargs):
        if get_device_name() != "cpu":
            return original(*args, **kwargs)
        with _modules_stay_on_host():
            return original(*args, **kwargs)

    get_model.credit_patch = NAME
    return get_model


def apply() -> None:
    """Install the wrapper once; raises on versions the patch was not written for."""
    require_verl(NAME, verl.__version__)
    require_megatron(NAME, "megatron-core", "mbridge")
    from mbridge.core import bridge

    if getattr(bridge.get_model, "credit_patch", None) == NAME:
        return
    bridge.get_model = _built_on_host(bridge.get_model)
