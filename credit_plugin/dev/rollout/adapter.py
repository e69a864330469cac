"""The ``BaseRollout`` built in each actor worker for ``rollout.name=hf_cpu``: it syncs weights to the server.

verl's V1 trainer syncs with the "naive" checkpoint engine in colocated mode: each actor worker's
``update_weights`` hands its adapter a generator of ``(HF name, full tensor)``. Producing a full tensor
is collective over the actor's ranks, so every rank consumes the whole generator; the first rank of each
replica copies the tensors to host memory and sends them to its server through Ray's object store.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import ray
import torch
from torch.distributed.device_mesh import DeviceMesh
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.utils import ensure_async_iterator

from credit_plugin.dev.rollout.server import server_actor_name


class HFCPURolloutAdapter(BaseRollout):
    """Weight sync from the colocated trainer to the replica's server (a full state-dict copy per sync).

    Args:
        replica_rank: -1 to derive it from the worker's ``RANK`` as verl's vLLM adapter does.
    """

    def __init__(
        self,
        config: RolloutConfig,
        model_config: HFModelConfig,
        device_mesh: DeviceMesh,
        replica_rank: int = -1,
    ) -> None:
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ["RANK"])
        replica_world_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // replica_world_size if replica_rank == -1 else replica_rank
        self.feeds_server = rank % replica_world_size == 0
        self._server: ray.actor.ActorHandle | None = None

    @property
    def server(self) -> ray.actor.ActorHandle:
        # The replica launches the server after the workers' init_model, so look it up on first use.
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        """No-op: the server never releases its weights or cache."""

    async def release(self) -> None:
        """No-op: the server never releases its weights or cache."""

    @torch.no_grad()
    async def update_weights(
        self,
        weights: Iterator[tuple[str, torch.Tensor]] | AsyncIterator[tuple[str, torch.Tensor]],
        wire_format: str = "named_tensors",
        global_steps: int | None = None,
        peft_config: Any = None,
        **kwargs: Any,
    ) -> None:
        """Consume ``weights`` on every rank; on a replica's first rank load them into its server.

        Args:
            weights: ``(HF parameter name, full tensor)`` pairs, sync or async.
            wire_format: only ``named_tensors``.
            global_steps: the trainer step of these weights, reported back by the server with each output.
            peft_config: must be None (LoRA is synced merged: ``actor_rollout_ref.model.lora.merge=True``).
        """
        if wire_format != "named_tensors":
            raise NotImplementedError(
                f"hf_cpu rollout syncs full tensors only (wire_format='named_tensors'), got {wire_format!r}; "
                "use actor_rollout_ref.rollout.checkpoint_engine.backend=naive"
            )
        if peft_config is not None:
            raise NotImplementedError(
                "hf_cpu rollout cannot load LoRA adapters; set actor_rollout_ref.model.lora.merge=True"
            )
        named_tensors: dict[str, torch.Tensor] = {}
        async for name, tensor in ensure_async_iterator(weights):
            if self.feeds_server:
                # A copy: the generator may reuse its buffers for the next tensor.
                named_tensors[name] = tensor.detach().to("cpu", copy=True)
        if not self.feeds_server:
            return
        await self.server.update_weights.remote(ray.put(named_tensors))
        if global_steps is not None:
            await self.server.set_global_steps.remote(global_steps)
