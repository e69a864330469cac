"""The rollout server: a Ray actor holding a ``transformers`` model on CPU, called by verl's agent loop.

verl reaches it as it reaches ``vLLMHttpServer``, but with no HTTP: agent-loop workers get this actor's
handle from the load balancer and call :meth:`HFCPUServer.generate`; the replica and the trainer call
the control methods. Requests that arrive while a batch is decoding wait and are decoded together as
the next batch (left-padded, up to ``rollout.max_num_seqs``).

The model runs in float32 whatever ``rollout.dtype`` says, so rollout log-probs match an fp32 actor's.
Weights come from ``model.path`` at start (also under ``load_format=dummy``) and then from the
trainer through :meth:`HFCPUServer.update_weights`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.tokenizer.tokenizer import normalize_token_ids
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.replica import TokenOutput
from verl.workers.rollout.utils import get_max_position_embeddings

from credit_plugin.dev.rollout import ROLLOUT_NAME
from credit_plugin.dev.rollout.decode import Completion, generate_batch
from credit_plugin.dev.rollout.sampling import LOGPROBS_MODES, SamplingDefaults, SamplingSpec, resolve_sampling_params

logger = logging.getLogger(__name__)

# Agent-loop workers send a step's requests one RPC at a time; waiting this long before taking a batch
# lets a burst share it instead of the first request decoding alone.
BATCH_WINDOW_S = 0.005


def server_actor_name(replica_rank: int, role: str = "", name_suffix: str = "") -> str:
    """The Ray actor name of a replica's server; the adapter in each actor worker finds it by this name.

    ``role`` is ``""`` for the policy rollout, ``"reward_"`` or ``"teacher_"`` for those replicas.
    """
    return f"{ROLLOUT_NAME}_server_{role}{replica_rank}{name_suffix}"


def eos_token_ids(tokenizer: Any, generation_config: Any) -> tuple[int, ...]:
    """The tokenizer's EOS plus every ``eos_token_id`` of the generation config, as vLLM stops on both."""
    ids: list[int] = []
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    configured = getattr(generation_config, "eos_token_id", None)
    if configured is not None:
        ids.extend(int(t) for t in (configured if isinstance(configured, list | tuple) else [configured]))
    return tuple(dict.fromkeys(ids))


@dataclass
class _Request:
    request_id: str
    prompt_ids: list[int]
    spec: SamplingSpec
    future: asyncio.Future


class HFCPUServer:
    """Token-in, token-out generation for one replica (wrap with ``ray.remote``; see :mod:`.replica`).

    Args:
        config: ``RolloutConfig`` (dataclass or DictConfig).
        model_config: ``HFModelConfig`` (dataclass or the ``actor_rollout_ref.model`` DictConfig).
        replica_rank: seeds sampling with ``rollout.seed + replica_rank``, as vLLM does.
    """

    def __init__(self, config: Any, model_config: Any, replica_rank: int) -> None:
        self.config: RolloutConfig = omega_conf_to_dataclass(config)
        self.model_config: HFModelConfig = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        if self.config.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(
                f"hf_cpu rollout: rollout.logprobs_mode={self.config.logprobs_mode!r} is not one of {LOGPROBS_MODES}"
            )
        self.replica_rank = replica_rank
        self.global_steps: int | None = None

        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_config.local_path,
            config=self.model_config.hf_config,
            dtype=torch.float32,
            attn_implementation="sdpa",
            trust_remote_code=self.model_config.trust_remote_code,
        ).eval()
        tokenizer = self.model_config.tokenizer
        eos = eos_token_ids(tokenizer, self.model_config.generation_config)
        if not eos:
            raise ValueError(
                f"hf_cpu rollout: neither the tokenizer nor the generation config of {self.model_config.path} "
                "names an EOS token"
            )
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else eos[0]
        self.defaults = SamplingDefaults(
            temperature=self.config.temperature,
            top_k=self.config.top_k,
            top_p=self.config.top_p,
            prompt_length=self.config.prompt_length,
            response_length=self.config.response_length,
            max_model_len=self.config.max_model_len or get_max_position_embeddings(self.model_config.hf_config),
            ignore_eos=self.config.ignore_eos,
            eos_token_ids=eos,
        )
        self.generator = torch.Generator().manual_seed(self.config.seed + replica_rank)

        self._pending: list[_Request] = []
        self._running: list[_Request] = []
        # Held while a batch decodes or weights load, so the two never overlap.
        self._engine = asyncio.Lock()
        # Read by the decode thread between steps.
        self._abort = threading.Event()
        # Cleared by abort_all_requests: new requests park until resume_generation, or are refused.
        self._admitting = asyncio.Event()
        self._admitting.set()
        self._rejecting = False

    def server_info(self) -> dict[str, Any]:
        """What this server decodes with (the replica awaits it to know the actor started)."""
        return {
            "model_path": self.model_config.path,
            "max_model_len": self.defaults.max_model_len,
            "eos_token_ids": list(self.defaults.eos_token_ids),
            "logprobs_mode": self.config.logprobs_mode,
        }

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        audio_data: list[Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> TokenOutput:
        """Generate one response; ``token_ids`` keep the stop token, ``log_probs`` only if ``logprobs`` was asked."""
        if image_data or video_data or audio_data or mm_processor_kwargs:
            raise ValueError(f"hf_cpu rollout is text-only; request {request_id} carries multimodal data")
        prompt_ids = normalize_token_ids(prompt_ids)
        spec = resolve_sampling_params(dict(sampling_params), len(prompt_ids), self.defaults, request_id)

        while not self._admitting.is_set():
            if self._rejecting:
                return self._token_output(Completion([], [], "abort"), spec)
            await self._admitting.wait()

        request = _Request(request_id, prompt_ids, spec, asyncio.get_running_loop().create_future())
        self._pending.append(request)
        while not request.future.done():
            async with self._engine:
                if not request.future.done():
                    await self._decode_pending()
        return self._token_output(request.future.result(), spec)

    async def _decode_pending(self) -> None:
        await asyncio.sleep(BATCH_WINDOW_S)
        batch = self._pending[: self.config.max_num_seqs]
        del self._pending[: len(batch)]
        if not batch:
            return
        self._running = batch
        try:
            completions = await asyncio.to_thread(
                generate_batch,
                self.model,
                [r.prompt_ids for r in batch],
                [r.spec for r in batch],
                pad_token_id=self.pad_token_id,
                logprobs_mode=self.config.logprobs_mode,
                generator=self.generator,
                abort=self._abort,
            )
        except Exception as error:
            for r in batch:
                r.future.set_exception(error)
            return
        finally:
            self._running = []
        for r, completion in zip(batch, completions, strict=True):
            r.future.set_result(completion)

    def _token_output(self, completion: Completion, spec: SamplingSpec) -> TokenOutput:
        # vLLM reports both a stop token and a spent budget as "completed"; verl's client tells them apart.
        return TokenOutput(
            token_ids=completion.token_ids,
            log_probs=completion.log_probs if spec.return_log_probs else None,
            stop_reason="aborted" if completion.finish_reason == "abort" else "completed",
            num_preempted=0,
            extra_fields={"global_steps": self.global_steps, "num_cached_tokens": 0},
        )

    async def update_weights(self, named_tensors: dict[str, torch.Tensor]) -> None:
        """Load full tensors by HF parameter name into the model (cast to its float32).

        A subset is allowed (tied or frozen weights need not be sent); a name the model lacks is an error.
        """
        async with self._engine:
            _, unexpected = self.model.load_state_dict(named_tensors, strict=False)
        if unexpected:
            raise ValueError(
                f"hf_cpu rollout: {len(unexpected)} weight names are not parameters of the rollout model "
                f"(e.g. {unexpected[:3]}); the trainer must send HF parameter names"
            )

    async def set_global_steps(self, global_steps: int) -> None:
        """Record the trainer step whose weights are loaded; returned in every output's ``extra_fields``."""
        self.global_steps = global_steps

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict[str, Any]:
        """Stop all requests; queued ones return nothing, decoding ones what they have, as ``"aborted"``.

        Returns once no batch is decoding. Later requests park until :meth:`resume_generation`, or with
        ``reject_request`` return ``"aborted"`` at once. ``reset_prefix_cache`` is accepted for vLLM's
        signature; there is no cache to reset.
        """
        self._rejecting = reject_request
        self._admitting.clear()
        aborted = [r.request_id for r in self._pending + self._running]
        for r in self._pending:
            r.future.set_result(Completion([], [], "abort"))
        self._pending.clear()
        self._abort.set()
        async with self._engine:
            self._abort.clear()
        return {"aborted_count": len(aborted), "request_ids": aborted}

    async def resume_generation(self) -> None:
        """Admit requests again after :meth:`abort_all_requests`."""
        self._rejecting = False
        self._admitting.set()

    # The trainer calls these around weight syncs and profiling. Weights stay in host memory and no
    # KV cache outlives a batch, so there is nothing to free, restore or reset.
    async def wake_up(self, tags: list[str] | None = None) -> None:
        """No-op: weights and cache are never released."""

    async def sleep(self) -> None:
        """No-op: weights stay in host memory."""

    async def clear_kv_cache(self) -> None:
        """No-op: no KV cache outlives a batch."""

    async def release_kv_cache(self) -> None:
        """No-op: no KV cache outlives a batch."""

    async def resume_kv_cache(self) -> None:
        """No-op: no KV cache outlives a batch."""

    async def start_profile(self, **kwargs: Any) -> None:
        """No-op: this backend has no profiler hook."""

    async def stop_profile(self) -> None:
        """No-op: this backend has no profiler hook."""
