"""``make bench``: what CREDIT costs over SDPO, as ratios measured side by side in one run.

Sections (each timing is the median of several runs after a warm-up; absolute milliseconds next to each ratio):

- ``math``: CREDIT's token rewards (K negatives, ``mean`` / ``logmeanexp``) against SDPO's, on (B, T) tensors.
  Memory is not measured here: torch's CPU allocator keeps no statistics, and a process's peak RSS says
  nothing about one call.
- ``teacher_build``: building the teacher batch (reprompts, contrast variants, verl's layout) with K negatives
  against K = 0 (SDPO), with the real Qwen tokenizer; also the tokens each sends to the workers.
- ``teacher_pass``: scoring on verl's own hybrid ``actor_rollout_ref`` worker (CPU platform, tiny random Qwen2
  with the real 151k vocabulary, dynamic batch size): CREDIT's ``1 + K`` variants in one call against the same
  rows in ``1 + K`` calls and against SDPO's single variant, and the ``trust_region`` teacher against the
  ``frozen`` one. Skipped with ``--no-workers``.
- ``logit_teacher_pass``: the teacher pass at ``granularity: logit`` (``compute_teacher_topk``, top-100 ids per
  response token, given or the teacher's own) against token level (``compute_ref_log_prob``) on the same rows
  and worker: time and the worker's peak memory above its resting RSS (``peak_mb``). Skipped with
  ``--no-workers``.
- ``megatron_teacher_pass``: the CREDIT teacher pass (the ref engine's ``compute_ref_log_prob`` on the
  ``1 + K`` variants) on verl's hybrid Megatron worker at TP=2 (2 processes, CPU platform, vocabulary split
  over the two ranks) against verl's own ``compute_log_prob`` of the actor on the same rows and tokens. Both run
  verl's vocab-parallel log-prob pass, so no rank holds [tokens x full vocabulary] logits. Skipped with
  ``--no-workers`` or without the ``megatron-cpu`` extra.
- ``async_step``: CREDIT's mean step time (verl's ``timing_s/step``) under ``trainer_mode: credit_colocate_async``
  against the sync ``credit`` trainer, through ``main_ppo`` on the tiny CPU recipe (same budget, same seed,
  runs alternated), steps after the first (start-up, the async warm-up batch) only. Skipped with
  ``--no-workers``.
- ``reward``: code samples per second through the ``credit`` reward manager, sandbox (bubblewrap) included:
  trivial stdin programs with 3 tests each, scored as verl's reward loop does (one ``run_single`` per
  sample, all at once), with ``max_parallel=1`` (the baseline) and the default ``max_parallel``.

Ratios are machine-independent to first order. Results go to ``runs/bench/results.json``
(``{"results": {section: {name: {ms, baseline, ratio, ...}}}, "machine": ..., "sizes": ...}``) and a markdown
table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from tensordict import TensorDict
    from transformers import PreTrainedTokenizerBase

    from credit_plugin.teacher import TeacherBatch

REPO = Path(__file__).resolve().parents[1]
WORDS = "the of a to in is that for it as with on be by this are or at from an which".split()
Rows = dict[str, dict[str, Any]]
TRUST_REGION_COEF = 0.05  # tau of the trust_region teacher; its cost does not depend on the value
# Megatron splits the vocabulary over TP ranks: the real Qwen2.5 size, divisible by 2, above the tokenizer's 151669.
MEGATRON_VOCAB = 151936


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run."""

    batch: int  # B samples of the reward math
    tokens: int  # T response tokens of the reward math
    negatives: int  # K
    groups: int  # prompt groups of the teacher batch that is built
    per_group: int  # samples per prompt group
    pass_groups: int  # prompt groups of the (smaller) batch the workers score
    fast_repeats: int  # rounds of the reward math and of the teacher batch build
    worker_repeats: int  # rounds of worker calls
    max_tokens: int  # the workers' log-prob token budget per micro-batch (dynamic batch size)
    code_samples: int  # code responses scored through the reward manager per round
    topk: int  # k ids per response token of the logit-level teacher pass (SDPO's published 100)
    async_steps: int  # main_ppo steps of each sync and colocate_async run
    async_rounds: int  # sync/async run pairs, alternated


FULL = Sizes(
    batch=256,
    tokens=512,
    negatives=4,
    groups=16,
    per_group=4,
    pass_groups=5,
    fast_repeats=20,
    worker_repeats=3,
    max_tokens=2048,
    code_samples=64,
    topk=100,
    async_steps=6,
    async_rounds=2,
)
QUICK = Sizes(
    batch=16,
    tokens=64,
    negatives=4,
    groups=6,
    per_group=2,
    pass_groups=5,
    fast_repeats=10,
    worker_repeats=2,
    max_tokens=1024,
    code_samples=8,
    topk=20,
    async_steps=2,
    async_rounds=1,
)


def interleaved_ms(
    fns: Mapping[str, Callable[[], Any]], repeats: int, inner: int = 1, warm_up: bool = True
) -> tuple[dict[str, float], dict[str, Any]]:
    """Median wall time in milliseconds of each of ``fns``, measured side by side.

    Each of ``repeats`` rounds times every function once (``inner`` calls averaged, for sub-millisecond ones),
    in alternating order, so that load from other processes on a shared machine hits a measurement and its
    baseline alike. With ``warm_up``, every function is called once untimed first.

    Returns:
        ``{name: median ms per call}`` and ``{name: the value its last call returned}``.
    """
    last: dict[str, Any] = {}
    if warm_up:
        last = {name: fn() for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats):
        names = list(fns) if round_ % 2 == 0 else list(reversed(fns))
        for name in names:
            start = time.perf_counter()
            for _ in range(inner):
                last[name] = fns[name]()
            times[name].append((time.perf_counter() - start) * 1e3 / inner)
    return {name: statistics.median(values) for name, values in times.items()}, last


def entry(ms: float, baseline_ms: float, baseline: str, **extra: Any) -> dict[str, Any]:
    """One result row: absolute time, the name of its baseline and the ratio to it, plus ``extra`` fields."""
    return {"ms": round(ms, 4), "baseline": baseline, "ratio": round(ms / baseline_ms, 3), **extra}


# ---------------------------------------------------------------- math


def bench_math(sizes: Sizes) -> Rows:
    """CREDIT's token rewards against SDPO's on random log-probs of shape (B, T) and (B, K, T)."""
    from credit_plugin.rewards import credit_token_rewards, sdpo_token_rewards

    generator = torch.Generator().manual_seed(0)
    shape = (sizes.batch, sizes.tokens)
    teacher = -torch.rand(shape, generator=generator) * 5
    student = -torch.rand(shape, generator=generator) * 5
    contrast = -torch.rand((sizes.batch, sizes.negatives, sizes.tokens), generator=generator) * 5
    mask = (torch.rand(shape, generator=generator) > 0.1).float()

    fns = {"sdpo_token_rewards": lambda: sdpo_token_rewards(teacher, student, mask)}
    for aggregate in ("mean", "logmeanexp"):
        fns[f"credit_token_rewards_{aggregate}_K{sizes.negatives}"] = lambda aggregate=aggregate: credit_token_rewards(
            teacher, contrast, student, mask, 1.0, aggregate
        )
    ms, _ = interleaved_ms(fns, sizes.fast_repeats, inner=10)
    sdpo = ms["sdpo_token_rewards"]
    return {name: entry(value, sdpo, "sdpo_token_rewards") for name, value in ms.items()}


# ---------------------------------------------------------------- teacher batch


def _text(rng: np.random.Generator, words: int) -> str:
    return " ".join(rng.choice(WORDS, size=words))


def synthetic_batch(
    tokenizer: PreTrainedTokenizerBase, groups: int, per_group: int, odd_group_feedback: bool = True
) -> dict[str, Any]:
    """A batch shaped like a feedback task: ``groups`` prompts of ``per_group`` samples each, one success in
    every other group, feedback on every failure (``odd_group_feedback=False``: in the groups without a success
    only on the first sample, so the others have no teacher context); prompts of about 300 characters, responses and
    feedback of about 200. Returns ``build_teacher_batch`` keyword arguments (all but ``config`` and the
    randomness).
    """
    rng = np.random.default_rng(0)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    raw_prompt, responses, uid, scores, feedback = [], [], [], [], []
    for group in range(groups):
        question = f"Problem {group}: " + _text(rng, 60)
        for sample in range(per_group):
            success = group % 2 == 0 and sample == 0
            raw_prompt.append([{"role": "user", "content": question}])
            responses.append(torch.tensor(tokenizer.encode(_text(rng, 40)) + [end]))
            uid.append(f"g{group}")
            scores.append(1.0 if success else 0.0)
            text = "Failed test 3: expected 12, got 7. " + _text(rng, 30)
            feedback.append(None if success or (group % 2 and sample and not odd_group_feedback) else text)
    return {
        "raw_prompt": raw_prompt,
        "responses": responses,
        "response_mask": [torch.ones_like(row) for row in responses],
        "uid": np.array(uid, dtype=object),
        "scores": torch.tensor(scores),
        "feedback": feedback,
        "tokenizer": tokenizer,
    }


def teacher_batch(batch: dict[str, Any], negatives: int) -> TeacherBatch:
    """``build_teacher_batch`` on ``batch`` with K = ``negatives`` (0: SDPO), without padding rows."""
    from credit_plugin.config import CreditConfig
    from credit_plugin.negatives import negatives_generator
    from credit_plugin.teacher import build_teacher_batch

    # SDPO is contrast_coef=0: the teacher batch then carries no contrast variants.
    config = CreditConfig.from_dict({"num_negatives": max(negatives, 1), "contrast_coef": 1.0 if negatives else 0.0})
    return build_teacher_batch(
        **batch, config=config, generator=negatives_generator(0, 1), temperature=1.0, row_multiple=1
    )


def tokens_of(teacher: TeacherBatch) -> int:
    """Tokens sent to the worker: the summed ``input_ids`` lengths of every row."""
    return int(teacher.data["input_ids"].offsets()[-1])


def bench_teacher_build(tokenizer: PreTrainedTokenizerBase, sizes: Sizes) -> Rows:
    """Teacher batch building with K negatives against SDPO's (K = 0), and the tokens each produces."""
    batch = synthetic_batch(tokenizer, sizes.groups, sizes.per_group)
    samples, k = len(batch["raw_prompt"]), sizes.negatives
    ms, built = interleaved_ms(
        {"sdpo": lambda: teacher_batch(batch, 0), "credit": lambda: teacher_batch(batch, k)}, sizes.fast_repeats
    )
    sdpo, credit = ms["sdpo"], ms["credit"]
    sdpo_tokens, credit_tokens = tokens_of(built["sdpo"]), tokens_of(built["credit"])
    return {
        "build_sdpo": entry(
            sdpo, sdpo, "build_sdpo", samples=samples, ms_per_sample=round(sdpo / samples, 3), tokens=sdpo_tokens
        ),
        f"build_credit_K{k}": entry(
            credit,
            sdpo,
            "build_sdpo",
            samples=samples,
            ms_per_sample=round(credit / samples, 3),
            tokens=credit_tokens,
            tokens_ratio=round(credit_tokens / sdpo_tokens, 3),
        ),
    }


def skipped_rows_tokens(batch: dict[str, Any], teacher: TeacherBatch, config: Any) -> int:
    """Tokens of the teacher rows ``teacher`` skips (samples without a context), rendered as they were sent
    before rows were skipped: the plain prompt (variant 0) and the swapped inputs without context (variants
    ``k + 1``), each followed by the sample's response."""
    from credit_plugin.teacher.prompts import TeacherPrompts

    size = teacher.num_samples
    renderer = TeacherPrompts(batch["raw_prompt"], [False] * size, batch["tokenizer"], config, None)
    sources = torch.cat([torch.arange(size)[:, None], teacher.negatives], dim=1)
    skipped = (teacher.row_index < 0).nonzero().tolist()  # (variant, sample)
    prompts = renderer.swapped([(index, int(sources[index, variant])) for variant, index in skipped])
    return sum(len(ids) + len(batch["responses"][index]) for ids, (_, index) in zip(prompts, skipped, strict=True))


def bench_skipped_rows(tokenizer: PreTrainedTokenizerBase, sizes: Sizes) -> Rows:
    """Rows and tokens the teacher pass sends at a typical context fraction (half the samples: in the groups
    without a success only the first gets feedback), against the layout that scored all ``1 + K`` variants of
    every sample."""
    from credit_plugin.config import CreditConfig

    batch = synthetic_batch(tokenizer, sizes.groups, sizes.per_group, odd_group_feedback=False)
    k = sizes.negatives
    ms, built = interleaved_ms({"credit": lambda: teacher_batch(batch, k)}, sizes.fast_repeats)
    teacher = built["credit"]
    samples, sent_rows, sent_tokens = teacher.num_samples, teacher.num_rows, tokens_of(teacher)
    all_rows = (1 + k) * samples
    all_tokens = sent_tokens + skipped_rows_tokens(batch, teacher, CreditConfig(num_negatives=k))
    return {
        f"teacher_rows_K{k}": entry(
            ms["credit"],
            ms["credit"],
            f"teacher_rows_K{k}",
            samples=samples,
            context_fraction=round(float(teacher.self_distillation_mask.mean()), 3),
            rows_sent=sent_rows,
            rows_all_variants=all_rows,
            rows_saved_fraction=round(1 - sent_rows / all_rows, 3),
            tokens_sent=sent_tokens,
            tokens_all_variants=all_tokens,
            tokens_saved_fraction=round(1 - sent_tokens / all_tokens, 3),
        )
    }


# ---------------------------------------------------------------- teacher pass on verl's worker


def save_tiny_model(tokenizer: PreTrainedTokenizerBase, directory: Path, vocab_size: int | None = None) -> Path:
    """The demo's tiny Qwen2 architecture (2 layers, hidden 64, the tokenizer's full vocabulary, sdpa) with
    seeded random weights (pre-training does not change the cost) and the tokenizer, saved where verl's
    workers load a model path. ``vocab_size`` pads the vocabulary (Megatron splits it over TP ranks)."""
    import transformers

    from credit_plugin.dev.tiny.model import TinyModelSpec, tiny_model_config

    torch.manual_seed(0)
    config = tiny_model_config(tokenizer, TinyModelSpec(intermediate_size=128))
    if vocab_size is not None:
        config.vocab_size = vocab_size
    transformers.Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@contextlib.contextmanager
def hybrid_worker(model_dir: Path, max_tokens: int, tensor_parallel: int = 0) -> Iterator[Any]:
    """Local Ray and one ``actor_rollout_ref`` worker group (CPU platform), shut down on exit: FSDP with world
    size 1, or with ``tensor_parallel`` > 0 the Megatron engine over that many processes."""
    import ray

    from credit_plugin.dev.cpu.workers import compose_cpu_config, create_worker_groups, ray_init_kwargs
    from credit_plugin.workers import CreditActorRolloutRefWorker

    world = max(tensor_parallel, 1)
    megatron = [
        f"actor_rollout_ref.actor.megatron.tensor_model_parallel_size={tensor_parallel}",
        "actor_rollout_ref.actor.optim.total_training_steps=1",
    ]
    overrides = [
        "actor_rollout_ref.rollout.name=hf_cpu",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
        f"actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu={max_tokens}",
        "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=true",
        f"actor_rollout_ref.ref.log_prob_max_token_len_per_gpu={max_tokens}",
    ]
    config = compose_cpu_config(
        str(model_dir),
        world_size=world,
        config_name="credit_trainer",
        engine="megatron" if tensor_parallel else "fsdp",
        overrides=overrides + (megatron if tensor_parallel else []),
    )
    ray.init(**ray_init_kwargs(world))
    try:
        groups = create_worker_groups(config, roles=("actor_rollout_ref",), worker_cls=CreditActorRolloutRefWorker)
        yield groups["actor_rollout_ref"]
    finally:
        ray.shutdown()


def rows_of(data: TensorDict, start: int, stop: int) -> TensorDict:
    """Rows ``start:stop`` of a teacher TensorDict (jagged fields and metadata)."""
    from verl.utils import tensordict_utils as tu

    return tu.index_select_tensor_dict(data, list(range(start, stop)))


def trust_region_input(data: TensorDict) -> TensorDict:
    """A copy of ``data`` carrying the ``trust_region_coef`` that ``compute_trust_region_log_prob`` pops."""
    from verl.utils import tensordict_utils as tu

    copy = rows_of(data, 0, len(data))
    tu.assign_non_tensor(copy, trust_region_coef=TRUST_REGION_COEF)
    return copy


def worker_metrics(output: TensorDict) -> dict[str, float]:
    """The scalar metrics verl's worker reports with a log-prob output.

    On the CPU platform ``perf/max_memory_allocated_gb`` is the worker process's peak RSS *so far* (it never
    resets), and without a loss function verl's ``loss`` adds 1 per micro-batch, so it counts micro-batches.
    """
    from verl.utils import tensordict_utils as tu

    metrics = tu.get(output, key="metrics", default=None) or {}
    return {name: round(float(value), 4) for name, value in metrics.items() if isinstance(value, int | float)}


def bench_teacher_pass(tokenizer: PreTrainedTokenizerBase, sizes: Sizes) -> Rows:
    """The teacher pass on verl's worker: CREDIT one call, CREDIT ``1 + K`` calls, SDPO frozen, SDPO trust region."""
    batch = synthetic_batch(tokenizer, sizes.pass_groups, sizes.per_group)
    sdpo, credit = teacher_batch(batch, 0), teacher_batch(batch, sizes.negatives)
    samples, k, budget = sdpo.num_samples, sizes.negatives, sizes.max_tokens
    from verl.utils import tensordict_utils as tu

    from credit_plugin.teacher import fit_token_budget

    sdpo_data, credit_data = fit_token_budget(sdpo.data, budget), fit_token_budget(credit.data, budget)
    # the rows of variant v, as credit.row_index maps them (no padding rows: row_multiple=1)
    variants = [
        fit_token_budget(tu.index_select_tensor_dict(credit.data, row[row >= 0].tolist()), budget)
        for row in credit.row_index
    ]
    warm_up = rows_of(sdpo_data, 0, min(4, samples))
    trust_region_data, warm_up_trust_region = trust_region_input(sdpo_data), trust_region_input(warm_up)

    with (
        tempfile.TemporaryDirectory() as directory,
        hybrid_worker(save_tiny_model(tokenizer, Path(directory)), budget) as wg,
    ):
        # one small call per method pays the lazy start-up costs (engine, kernels) outside the timings
        wg.compute_ref_log_prob(warm_up)
        wg.compute_trust_region_log_prob(warm_up_trust_region)
        ms, outputs = interleaved_ms(
            {
                "frozen": lambda: wg.compute_ref_log_prob(sdpo_data),
                "one_call": lambda: wg.compute_ref_log_prob(credit_data),
                "split": lambda: [wg.compute_ref_log_prob(part) for part in variants][-1],
                "trust_region": lambda: wg.compute_trust_region_log_prob(trust_region_data),
            },
            sizes.worker_repeats,
            warm_up=False,
        )
    frozen, one_call, split, trust_region = ms["frozen"], ms["one_call"], ms["split"], ms["trust_region"]
    metrics = {name: worker_metrics(output) for name, output in outputs.items()}

    sdpo_tokens, credit_tokens = tokens_of(sdpo), tokens_of(credit)
    return {
        "sdpo_frozen_one_call": entry(
            frozen, frozen, "sdpo_frozen_one_call", rows=sdpo.num_rows, tokens=sdpo_tokens, worker=metrics["frozen"]
        ),
        f"credit_K{k}_one_call": entry(
            one_call,
            frozen,
            "sdpo_frozen_one_call",
            rows=credit.num_rows,
            tokens=credit_tokens,
            tokens_ratio=round(credit_tokens / sdpo_tokens, 3),
            worker=metrics["one_call"],
        ),
        f"credit_K{k}_{1 + k}_calls": entry(
            split, one_call, f"credit_K{k}_one_call", calls=1 + k, rows=credit.num_rows, worker=metrics["split"]
        ),
        "sdpo_trust_region_one_call": entry(
            trust_region, frozen, "sdpo_frozen_one_call", rows=sdpo.num_rows, worker=metrics["trust_region"]
        ),
    }


def _worker_status_kb(worker: Any, reset_peak: bool) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB of a Ray worker process; ``reset_peak`` first resets its peak RSS to the current RSS
    (Linux ``clear_refs`` 5), so the next peak belongs to the calls after it."""
    import ray

    def status(_: Any) -> tuple[int, int]:
        if reset_peak:
            with open("/proc/self/clear_refs", "w") as file:
                file.write("5")
        fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

    return ray.get(worker.__ray_call__.remote(status))


def peak_mb(wg: Any, call: Callable[[], Any]) -> float:
    """Peak resident memory of ``call``'s worker process above its resting RSS, in MiB (largest worker).

    torch's CPU allocator keeps no statistics and verl's ``perf/max_memory_allocated_gb`` is the process's peak
    RSS so far (it never resets), so this resets the peak before the call and reads it after."""
    rest = [_worker_status_kb(worker, reset_peak=True)[0] for worker in wg.workers]
    call()
    peaks = [_worker_status_kb(worker, reset_peak=False)[1] for worker in wg.workers]
    return round(max(peak - before for peak, before in zip(peaks, rest, strict=True)) / 1024, 1)


def bench_logit_teacher_pass(tokenizer: PreTrainedTokenizerBase, sizes: Sizes) -> Rows:
    """The teacher pass at ``granularity: logit`` against token level on the same rows (CREDIT's ``1 + K``
    variants, one call, frozen teacher) on verl's hybrid FSDP worker: time, and peak memory of the worker.

    Token level is ``compute_ref_log_prob`` (the sampled token's log-prob); logit level is
    ``compute_teacher_topk`` at ``k = sizes.topk`` ids per token, given (the student's, ``topk_source:
    student``; here the ids the teacher's own top-k call returned, which costs the same to gather) or chosen by
    the teacher (``topk_source: teacher``, a ``topk`` over the vocabulary per token)."""
    from verl.utils import tensordict_utils as tu

    from credit_plugin.logit_engines import TOPK_IDS
    from credit_plugin.teacher import fit_token_budget

    batch = synthetic_batch(tokenizer, sizes.pass_groups, sizes.per_group)
    credit = teacher_batch(batch, sizes.negatives)
    data = fit_token_budget(credit.data, sizes.max_tokens)

    def logit_input(source: TensorDict, ids: torch.Tensor | None) -> TensorDict:
        copy = rows_of(source, 0, len(source))
        tu.assign_non_tensor(copy, credit_teacher="frozen", credit_topk=sizes.topk)
        if ids is not None:
            copy[TOPK_IDS] = ids
        return copy

    warm_up = rows_of(data, 0, 2)
    with (
        tempfile.TemporaryDirectory() as directory,
        hybrid_worker(save_tiny_model(tokenizer, Path(directory)), sizes.max_tokens) as wg,
    ):
        wg.compute_ref_log_prob(warm_up)
        wg.compute_teacher_topk(logit_input(warm_up, None))
        ids = wg.compute_teacher_topk(logit_input(data, None))[TOPK_IDS]
        calls = {
            "token": lambda: wg.compute_ref_log_prob(data),
            "logit_student_ids": lambda: wg.compute_teacher_topk(logit_input(data, ids)),
            "logit_teacher_topk": lambda: wg.compute_teacher_topk(logit_input(data, None)),
        }
        ms, _ = interleaved_ms(calls, sizes.worker_repeats, warm_up=False)
        # peak memory in alternating rounds too (the largest of two), after the timings: it resets the peak
        memory: dict[str, float] = dict.fromkeys(calls, 0.0)
        for round_ in range(2):
            for name in list(calls) if round_ == 0 else list(reversed(calls)):
                memory[name] = max(memory[name], peak_mb(wg, calls[name]))
    baseline = f"token_level_K{sizes.negatives}"
    common = {"rows": credit.num_rows, "tokens": tokens_of(credit)}
    rows = {
        baseline: entry(ms["token"], ms["token"], baseline, peak_mb=memory["token"], peak_ratio=1.0, **common),
    }
    for name in ("logit_student_ids", "logit_teacher_topk"):
        rows[f"{name}_k{sizes.topk}_K{sizes.negatives}"] = entry(
            ms[name],
            ms["token"],
            baseline,
            peak_mb=memory[name],
            peak_ratio=round(memory[name] / max(memory["token"], 1e-6), 3),
            **common,
        )
    return rows


def bench_megatron_teacher_pass(tokenizer: PreTrainedTokenizerBase, sizes: Sizes) -> Rows:
    """CREDIT's teacher pass (ref engine, ``1 + K`` variants, one call) and the same rows under the
    ``trust_region`` teacher (each TP rank mixing its vocabulary shard) vs verl's ``compute_log_prob`` on the
    same rows, on the hybrid Megatron worker at TP=2."""
    from credit_plugin.teacher import fit_token_budget

    batch = synthetic_batch(tokenizer, sizes.pass_groups, sizes.per_group)
    credit = teacher_batch(batch, sizes.negatives)
    data = fit_token_budget(credit.data, sizes.max_tokens)
    warm_up = rows_of(data, 0, 2)
    trust_region_data = trust_region_input(data)
    with (
        tempfile.TemporaryDirectory() as directory,
        hybrid_worker(
            save_tiny_model(tokenizer, Path(directory), vocab_size=MEGATRON_VOCAB), sizes.max_tokens, tensor_parallel=2
        ) as wg,
    ):
        wg.compute_log_prob(warm_up)
        wg.compute_ref_log_prob(warm_up)
        wg.compute_trust_region_log_prob(trust_region_input(warm_up))
        ms, outputs = interleaved_ms(
            {
                "log_prob": lambda: wg.compute_log_prob(data),
                "teacher": lambda: wg.compute_ref_log_prob(data),
                "trust_region": lambda: wg.compute_trust_region_log_prob(trust_region_data),
            },
            sizes.worker_repeats,
            warm_up=False,
        )
    baseline = "verl_compute_log_prob_tp2"
    return {
        baseline: entry(ms["log_prob"], ms["log_prob"], baseline, rows=credit.num_rows, tokens=tokens_of(credit)),
        f"credit_K{sizes.negatives}_teacher_pass_tp2": entry(
            ms["teacher"], ms["log_prob"], baseline, rows=credit.num_rows, worker=worker_metrics(outputs["teacher"])
        ),
        f"credit_K{sizes.negatives}_trust_region_tp2": entry(
            ms["trust_region"],
            ms["log_prob"],
            baseline,
            rows=credit.num_rows,
            worker=worker_metrics(outputs["trust_region"]),
        ),
    }


# ---------------------------------------------------------------- async trainer


def step_seconds(metrics: Path) -> list[float]:
    """verl's ``timing_s/step`` of every training step after the first, from a demo run's ``metrics.jsonl``."""
    records = [json.loads(line)["data"] for line in metrics.read_text().splitlines()]
    return [record["timing_s/step"] for record in records if "timing_s/step" in record][1:]


def bench_async_step(tokenizer: PreTrainedTokenizerBase, sizes: Sizes) -> Rows:
    """Mean step time of CREDIT under ``colocate_async`` against the sync trainer, on the tiny CPU recipe
    (``recipes/tiny_cpu``, hf_cpu rollout, FSDP): ``async_rounds`` pairs of ``async_steps``-step runs, in
    alternating order. The mean, not the median: under ``colocate_async`` the steps alternate between ones that
    find their batch generated and ones that wait for it, and the mean step is what sets the run's wall time."""
    from learn import ASYNC_MODE, load_demo

    demo = load_demo()
    modes = {"sync": (), "colocate_async": ASYNC_MODE}
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        assets = demo.prepare_assets(root / "assets", seed=0)
        for round_ in range(sizes.async_rounds):
            for mode in list(modes) if round_ % 2 == 0 else list(reversed(modes)):
                run_root = root / f"{mode}_{round_}"
                extra = ["trainer.save_freq=-1", "trainer.test_freq=-1", *modes[mode]]
                seconds[mode] += step_seconds(demo.run("credit", run_root, assets, sizes.async_steps, extra))
    sync_ms = statistics.fmean(seconds["sync"]) * 1e3
    async_ms = statistics.fmean(seconds["colocate_async"]) * 1e3
    common = {"steps_timed": len(seconds["sync"]), "steps_per_run": sizes.async_steps}
    return {
        "credit_sync_step": entry(sync_ms, sync_ms, "credit_sync_step", step_s=seconds["sync"], **common),
        "credit_colocate_async_step": entry(
            async_ms, sync_ms, "credit_sync_step", step_s=seconds["colocate_async"], **common
        ),
    }


# ---------------------------------------------------------------- reward


def code_batch(tokenizer: PreTrainedTokenizerBase, samples: int) -> list[Any]:
    """``samples`` one-sample DataProtos as verl's reward loop passes them: a correct program, 3 stdin tests."""
    from tensordict import TensorDict
    from verl import DataProto

    program = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    tests = json.dumps({"inputs": ["1 2\n", "3 4\n", "10 -2\n"], "outputs": ["3\n", "7\n", "8\n"]})
    response = torch.tensor([tokenizer.encode(program, add_special_tokens=False)])
    prompt = torch.tensor([tokenizer.encode("Add two integers.", add_special_tokens=False)])
    tensors = {
        "prompts": prompt,
        "responses": response,
        "attention_mask": torch.ones(1, prompt.shape[1] + response.shape[1], dtype=torch.long),
    }
    fields = {
        "data_source": np.array(["livecodebench"], dtype=object),
        "reward_model": np.array([{"ground_truth": tests}], dtype=object),
    }
    return [DataProto(batch=TensorDict(tensors, batch_size=1), non_tensor_batch=fields) for _ in range(samples)]


def bench_reward(tokenizer: PreTrainedTokenizerBase, sizes: Sizes) -> Rows:
    """ms per code sample through the reward manager, serial against parallel (isolation included)."""
    import asyncio

    from omegaconf import OmegaConf

    from credit_plugin.reward_manager import MANAGER_OPTIONS, CreditRewardManager

    batch = code_batch(tokenizer, sizes.code_samples)
    parallel = MANAGER_OPTIONS["max_parallel"]
    managers = {
        name: CreditRewardManager(OmegaConf.create({"reward": {"reward_kwargs": {"max_parallel": n}}}), tokenizer)
        for name, n in (("code_serial", 1), (f"code_parallel_{parallel}", parallel))
    }

    def score_all(manager: CreditRewardManager) -> Callable[[], list[float]]:
        async def gather() -> list[dict]:
            return await asyncio.gather(*(manager.run_single(sample) for sample in batch))

        return lambda: [out["reward_score"] for out in asyncio.run(gather())]

    ms, last = interleaved_ms({name: score_all(manager) for name, manager in managers.items()}, repeats=2)
    for name, scores in last.items():
        if scores != [1.0] * len(batch):
            raise RuntimeError(f"reward bench: {name} scored a correct program {scores}")
    per_sample = {name: value / len(batch) for name, value in ms.items()}
    return {
        name: entry(
            value,
            per_sample["code_serial"],
            "code_serial",
            samples=len(batch),
            samples_per_s=round(1e3 / value, 1),
        )
        for name, value in per_sample.items()
    }


# ---------------------------------------------------------------- report


def table(results: dict[str, Rows]) -> str:
    """Markdown table of every row; extra scalar fields (samples, tokens, ...) go to the last column."""
    lines = ["| section | measurement | ms | baseline | ratio | notes |", "|---|---|---|---|---|---|"]
    for section, rows in results.items():
        for name, row in rows.items():
            notes = ", ".join(
                f"{key}={value}"
                for key, value in row.items()
                if key not in ("ms", "baseline", "ratio", "worker", "step_s")
            )
            lines.append(f"| {section} | {name} | {row['ms']:.2f} | {row['baseline']} | {row['ratio']:.2f} | {notes} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the ratios were measured on."""
    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "verl": importlib.metadata.version("verl"),
        "transformers": importlib.metadata.version("transformers"),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


# name: (function of the tokenizer and the sizes, what it needs beyond torch: None, "workers" (Ray and verl's
# workers) or "megatron")
SECTIONS: dict[str, tuple[Callable[[PreTrainedTokenizerBase, Sizes], Rows], str | None]] = {
    "math": (lambda tokenizer, sizes: bench_math(sizes), None),
    "teacher_build": (bench_teacher_build, None),
    "teacher_rows": (bench_skipped_rows, None),
    "reward": (bench_reward, None),
    "teacher_pass": (bench_teacher_pass, "workers"),
    "logit_teacher_pass": (bench_logit_teacher_pass, "workers"),
    "megatron_teacher_pass": (bench_megatron_teacher_pass, "megatron"),
    "async_step": (bench_async_step, "workers"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test (under a minute)")
    parser.add_argument("--no-workers", action="store_true", help="skip the teacher pass on verl's Ray workers")
    parser.add_argument("--out", type=Path, default=REPO / "runs/bench/results.json", help="results JSON path")
    parser.add_argument(
        "--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS), help="which sections (default: all)"
    )
    args = parser.parse_args(argv)
    # before verl is imported, here and in the Ray workers
    os.environ.setdefault("VERL_PLATFORM", "cpu")
    from transformers import AutoTokenizer

    from credit_plugin.dev.tiny.model import qwen_tokenizer_dir

    start, load_start = time.perf_counter(), os.getloadavg()
    sizes = QUICK if args.quick else FULL
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    results, skipped = {}, []
    for name in args.sections:
        function, needs = SECTIONS[name]
        reason = "--no-workers" if needs and args.no_workers else None
        if needs == "megatron" and reason is None:
            from credit_plugin.dev.cpu import megatron

            reason = None if megatron.available() else "no megatron-cpu extra"
        if reason:
            skipped.append(name)
            print(f"{name}: skipped ({reason})", file=sys.stderr)
            continue
        results[name] = function(tokenizer, sizes)
    report = {
        "sizes": asdict(sizes),
        "machine": machine(),
        "wall_s": round(time.perf_counter() - start, 1),
        # other processes on the machine distort absolute times more than ratios (measured side by side)
        "load_average_1min": {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2)},
        "skipped": skipped,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table(results))
    print(f"\nwritten: {args.out} ({report['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
