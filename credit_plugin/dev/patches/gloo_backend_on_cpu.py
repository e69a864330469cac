"""Let verl's Ray workers start their process group with plain ``gloo`` when the device is ``cpu``.

Why a patch: verl 0.9.1's ``verl.utils.distributed.initialize_global_process_group_ray`` builds the backend
string ``f"cpu:gloo,{device}:{comm_backend}"``; with device ``cpu`` that is ``"cpu:gloo,cpu:gloo"``, which
``torch.distributed`` rejects ("Duplicate device type cpu"). ``TrainingWorker`` calls it without a backend and
no platform method can change the hard-coded ``cpu:gloo`` prefix. The wrapper passes ``backend="gloo"`` when
the platform's device is ``cpu`` and no backend was given; otherwise it calls verl's function unchanged.

Installed on ``verl.utils.distributed`` and on ``verl.workers.engine_workers``, which imports the name.
"""

from __future__ import annotations

import functools
import sys

import verl
from verl.utils import distributed
from verl.utils.device import get_device_name

from credit_plugin.dev.patches import require_verl

NAME = "gloo_backend_on_cpu"
IMPORTERS = ("verl.utils.distributed", "verl.workers.engine_workers")


def _with_gloo_on_cpu(original):
    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        if backend is None and get_device_name() == "cpu":
            backend = "gloo"
        return original(timeout_second=timeout_second, backend=backend)

    initialize_global_process_group_ray.credit_patch = NAME
    return initialize_global_process_group_ray


def apply() -> None:
    """Install the wrapper once; raises on a verl version the patch was not written for."""
    require_verl(NAME, verl.__version__)
    if getattr(distributed.initialize_global_process_group_ray, "credit_patch", None) == NAME:
        return
    patched = _with_gloo_on_cpu(distributed.initialize_global_process_group_ray)
    for module_name in IMPORTERS:
        module = sys.modules.get(module_name)
        if module is not None:
            module.initialize_global_process_group_ray = patched
