"""The ``RolloutReplica`` that verl's ``LLMServerManager`` builds for ``rollout.name=hf_cpu``."""

from __future__ import annotations

import ray
from verl.workers.rollout.replica import RolloutReplica

from credit_plugin.dev.rollout.server import HFCPUServer, server_actor_name


class HFCPUReplica(RolloutReplica):
    """One :class:`~credit_plugin.dev.rollout.server.HFCPUServer` actor per replica, whatever the parallel sizes.

    Weights come from ``model.path``; in hybrid mode (the colocated trainer) then from the trainer: the
    replica's ``tensor_model_parallel_size * data_parallel_size * pipeline_model_parallel_size`` actor workers
    share the one server, and the first of them feeds it weights (see :mod:`.adapter`).
    """

    async def launch_servers(self) -> None:
        """Start the server actor and wait until its model is loaded."""
        role = "reward_" if self.is_reward_model else "teacher_" if self.is_teacher_model else ""
        name = server_actor_name(self.replica_rank, role, self.name_suffix)
        server = (
            ray.remote(HFCPUServer)
            .options(name=name, max_concurrency=self.max_concurrency)
            .remote(
                config=self.config,
                model_config=self.model_config,
                replica_rank=self.replica_rank,
            )
        )
        await server.server_info.remote()
        self.servers = [server]
        self._server_handle = server
        # No HTTP endpoint: the address only has to be a unique key for verl's load balancer.
        self._server_address = name
