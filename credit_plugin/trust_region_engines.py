"""How each verl engine hands the ``trust_region`` teacher (``credit_plugin.trust_region``) its logits.

Both engines run the actor's own log-prob pass with the batch flag ``distillation_use_topk`` (the hook of
verl's top-k distillation), which makes them pass each micro-batch's logits to a function instead of taking
log-probs themselves (``distillation_only``). That function runs the frozen model on the same micro-batch
and mixes the two, so no logits leave the worker and a micro-batch's logits are the largest tensors held:

- FSDP: the full-vocabulary logits of the micro-batch (the engine's own layout, Ulysses-sliced).
- Megatron: each tensor-parallel rank's vocabulary shard; the mix is elementwise, and the label log-probs
  go through Megatron's vocab-parallel cross-entropy, so no rank holds a [tokens x full vocab] tensor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from tensordict import TensorDict

from credit_plugin.trust_region import DEFAULT_CHUNK_TOKENS, trust_region_log_probs

# The private method of verl's ``MegatronEngineWithLMHead`` that receives a micro-batch's logits with their
# labels, and the parameters :class:`MegatronTrustRegion` relies on (checked, so a verl that renames them fails
# loudly instead of silently scoring with the actor alone).
MEGATRON_LOGITS_PROCESSOR = "_lm_head_logits_processor"
MEGATRON_PROCESSOR_PARAMETERS = ("logits", "label", "temperature", "distillation_only", "logits_processor_func")


def _zero_loss(data: TensorDict) -> tuple[torch.Tensor, dict]:
    return torch.zeros((), device=data["input_ids"].device), {}


def engine_logits(engine, micro_batch: TensorDict) -> torch.Tensor:
    """The temperature-scaled logits of ``micro_batch`` from an FSDP ``engine``'s own forward step.

    ``micro_batch`` must carry ``distillation_use_topk`` and ``distillation_only`` (verl then passes the
    logits to the loss function and skips its own log-probs).

    Returns:
        Tensor of shape (1, N, V): N packed positions in the engine's layout (sliced and padded under
        Ulysses sequence parallelism).
    """
    captured: list[torch.Tensor] = []

    def capture(*, data: TensorDict, student_logits: torch.Tensor | None = None, **_: Any):
        if student_logits is None:
            return _zero_loss(data)
        captured.append(student_logits)
        return {}

    engine.forward_step(micro_batch, loss_function=capture, forward_only=True)
    if len(captured) != 1:
        raise RuntimeError("the frozen model's forward did not expose its logits (fused kernels enabled?)")
    return captured[0]


class TrustRegionLogits:
    """verl FSDP engine loss function that returns the trust-region teacher's label log-probs as ``log_probs``.

    Called twice per micro-batch by ``FSDPEngineWithLMHead.forward_step``: first with the actor's logits
    (``student_logits``, shape (1, N, V)), returning ``{"log_probs": (1, N)}``, which verl gathers into its
    usual nested ``log_probs`` output; then as the loss (zero: nothing is trained).
    """

    def __init__(self, actor_engine, frozen_logits: Callable[[TensorDict], torch.Tensor], coef: float):
        self.actor_engine = actor_engine
        self.frozen_logits = frozen_logits
        self.coef = coef

    def __call__(self, *, data: TensorDict, student_logits: torch.Tensor | None = None, **_: Any):
        if student_logits is None:
            return _zero_loss(data)
        frozen = self.frozen_logits(data)
        # The labels in the layout of the logits (rolled, SP-sliced): recomputed by verl's own input step.
        _, output_args = self.actor_engine.prepare_model_inputs(micro_batch=data)
        labels = output_args["input_ids_rmpad_rolled"].reshape(-1)
        log_probs = trust_region_log_probs(frozen.squeeze(0), student_logits.squeeze(0), labels, self.coef)
        return {"log_probs": log_probs.unsqueeze(0)}


def _ignore_output(*_: Any, **__: Any) -> None:
    """The post-processing verl's Megatron ``forward_step`` binds; a capture-only forward has none to do."""


def megatron_engine_logits(engine, micro_batch: TensorDict) -> torch.Tensor:
    """This rank's vocabulary shard of the temperature-scaled logits of ``micro_batch`` from a Megatron
    ``engine``'s own forward step (pipeline size 1: the whole model runs on this rank's stage).

    ``micro_batch`` must carry ``distillation_use_topk`` and ``distillation_only``.

    Returns:
        Tensor of shape (1, N, V / TP) (packed, ``thd``) or (B, S, V / TP) (padded, ``bshd``): the layout the
        actor engine gives its own logits of the same micro-batch when both share the parallel layout.
    """
    if len(engine.module) != 1:
        raise ValueError(f"the frozen Megatron model has {len(engine.module)} model chunks; expected 1 (no pipeline)")
    captured: list[torch.Tensor] = []

    def capture(*, student_logits: torch.Tensor, **_: Any) -> dict:
        captured.append(student_logits)
        return {}

    batches, module = iter([micro_batch]), engine.module[0]
    engine.forward_step(batches, module, logits_processor_func=capture, postprocess_micro_batch_func=_ignore_output)
    if len(captured) != 1:
        raise RuntimeError("the frozen Megatron model's forward did not expose its logits (fused kernels enabled?)")
    return captured[0]


class MegatronTrustRegion:
    """While active, a Megatron actor engine's log-prob pass returns the trust-region teacher's log-probs.

    verl's ``MegatronEngineWithLMHead`` hands each micro-batch's vocab-parallel logits with their labels to
    its ``_lm_head_logits_processor``, which passes the logits alone (no labels) to the distillation hook.
    This wraps that processor on the engine instance, binding the labels to the hook; verl's own code still
    scales the logits by temperature and, with ``distillation_only``, takes no log-probs of its own.
    """

    def __init__(
        self,
        engine,
        frozen_logits: Callable[[TensorDict], torch.Tensor],
        coef: float,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    ):
        processor = getattr(engine, MEGATRON_LOGITS_PROCESSOR, None)
        parameters = set(inspect.signature(processor).parameters) if processor is not None else set()
        missing = set(MEGATRON_PROCESSOR_PARAMETERS) - parameters
        if missing:
            raise NotImplementedError(
                f"credit.teacher=trust_region on Megatron hooks {type(engine).__name__}.{MEGATRON_LOGITS_PROCESSOR}"
                f"({', '.join(MEGATRON_PROCESSOR_PARAMETERS)}); this verl's lacks {sorted(missing)}"
            )
        self.engine, self.verl_processor = engine, processor
        self.frozen_logits, self.coef, self.chunk_tokens = frozen_logits, coef, chunk_tokens

    def __enter__(self) -> MegatronTrustRegion:
        setattr(self.engine, MEGATRON_LOGITS_PROCESSOR, self._processor)
        return self

    def __exit__(self, *_: Any) -> None:
        delattr(self.engine, MEGATRON_LOGITS_PROCESSOR)

    def _processor(self, logits: torch.Tensor, label: torch.Tensor, temperature: torch.Tensor, **kwargs: Any):
        kwargs["logits_processor_func"] = partial(self._mix, label=label)
        return self.verl_processor(logits, label, temperature, **kwargs)

    def _mix(self, *, student_logits: torch.Tensor, data: TensorDict, label: torch.Tensor, **_: Any) -> dict:
        """``{"log_probs": shape of label}`` from the actor's logits shard (..., V / TP) and the frozen model's."""
        from verl.utils.megatron.tensor_parallel import vocab_parallel_log_probs_from_logits

        frozen = self.frozen_logits(data)
        if frozen.shape != student_logits.shape:
            raise ValueError(
                f"trust-region teacher: the frozen model's logits shard {tuple(frozen.shape)} differs from the "
                f"actor's {tuple(student_logits.shape)} (are the ref and actor engines sharded alike?)"
            )
        width = student_logits.shape[-1]
        log_probs = trust_region_log_probs(
            frozen.reshape(-1, width),
            student_logits.reshape(-1, width),
            label.reshape(-1),
            self.coef,
            self.chunk_tokens,
            log_probs_of=vocab_parallel_log_probs_from_logits,
        )
        return {"log_probs": log_probs.view(label.shape)}
