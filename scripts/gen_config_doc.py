"""Write ``docs/configuration.md``: every option of the ``credit:`` section, generated from ``CreditConfig``.

    python scripts/gen_config_doc.py          # rewrite the doc
    python scripts/gen_config_doc.py --check  # exit 1 if the committed doc is stale (tests/test_docs.py)

Names, types and defaults come from the dataclass (``credit_plugin.config.CreditConfig``, whose defaults
``credit_defaults.yaml`` mirrors); descriptions from :data:`DESCRIPTIONS`, which must cover every field.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

from credit_plugin.config import CreditConfig

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "configuration.md"
# One line per option: what it does to the token reward or the teacher (docs/method.md has the derivations).
# A new CreditConfig field without an entry here stops the generator, so the reference never misses an option.
DESCRIPTIONS = {
    "contrast_coef": "lambda, weight of the contrastive (input-generic) baseline; `0` is exactly SDPO (no negatives "
    "are scored)",
    "contrast_form": "what lambda multiplies (`docs/method.md`): `reward` subtracts `lambda * (g - log pi_theta)`, "
    "SDPO's reward under the swapped prompts, 0 on prompt-agnostic tokens at lambda 1; `logprob` subtracts "
    "`lambda * g`, a raw log-prob that acts as an entropy bonus; `pmi` subtracts `lambda * (g - S')`, the full "
    "contrastive pMI, with `S'` the policy's own scores under the swapped prompts (one more actor call of K rows "
    "per sample); `bounded` subtracts `lambda * max(g - log pi_theta, min(T - log pi_theta, 0))`, the `reward` form "
    "with its term capped from below, so tokens the swapped prompts make unlikely earn no more than SDPO's reward "
    "(token level only)",
    "contrast_centering": "`none`, or `batch`: subtract the contrast term's mean over the batch's scored tokens, "
    "so it moves credit between tokens without shifting every advantage",
    "contrast_swap": "the other input of a contrast variant: `prompt`, the negative's whole prompt (every "
    "message, system prompt included), or `question`, only its last user turn inside the sample's own messages; "
    "the teacher and the `pmi` student swap the same thing (docs/method.md)",
    "num_negatives": "K, prompts of other prompt groups (never the sample's own uid) scored per sample, drawn "
    "without replacement; the baseline's variance falls like 1/K",
    "negative_aggregate": "how the K negatives' teacher log-probs combine: `mean` or `logmeanexp`",
    "negative_seed": "seed of the negative permutation; with the global step it makes the draw reproducible",
    "granularity": "`token`: the sampled token's reward is the advantage; `logit`: SDPO's top-k distillation with "
    "a tail bucket, CREDIT's contrastive target on that support (FSDP, and Megatron with tensor parallelism "
    "only; `docs/method.md`, Logit level)",
    "topk": "`logit` granularity: number of token ids distilled per response token (clamped to the vocabulary)",
    "topk_source": "`logit` granularity: whose top-k ids: `student` (SDPO's default, recorded in the old log-prob "
    "pass) or `teacher` (the teacher's own top-k under the reprompt; SDPO only, `contrast_coef: 0`)",
    "distillation_add_tail": "`logit` granularity: add a bucket for the probability mass outside the top-k",
    "alpha": "`logit` granularity: generalised JSD, `0` forward KL, `1` reverse KL, `0.5` JSD",
    "is_clip": "`logit` granularity: clip of the importance ratio of the distillation term (>= 1; SDPO uses 2.0); "
    "must stay `null` with `token`, whose ratio clip is verl's `actor.clip_ratio_low/high`",
    "outcome_mix": "`mix * A_grpo + (1 - mix) * A_credit`: blend in GRPO's outcome advantage (0 = pure CREDIT); "
    "`A_grpo` follows verl's `algorithm.norm_adv_by_std_in_grpo`",
    "teacher": "teacher weights: `frozen` (initial model, verl's ref), `current` (the actor), `ema` (moving average "
    "of the actor), `trust_region` (logit mix of frozen and current)",
    "teacher_update_rate": "tau: EMA rate of the `ema` teacher, or the mix coefficient of `trust_region`",
    "success_threshold": "a rollout whose reward is at or above it is a demonstration for its siblings",
    "dont_reprompt_on_self_success": "a sample's own success is never its demonstration (another sibling's is used)",
    "remove_thinking_from_demonstration": "strip `<think>...</think>` from a demonstration before it enters the "
    "teacher prompt",
    "include_environment_feedback": "put the scorer's textual feedback (failed tests, wrong option, ...) in the "
    "teacher prompt",
    "feedback_only_without_solution": "use the environment feedback only when no sibling succeeded",
    "max_reprompt_len": "token budget of the teacher prompt (reprompt)",
    "reprompt_truncation": "what to do with a longer teacher prompt: cut on the `left` or `right`, or `error`",
    "reprompt_template": "teacher prompt layout; must contain `{prompt}`, `{solution}` and `{feedback}` (SDPO's "
    "layout)",
    "solution_template": "how a successful sibling's answer enters the teacher prompt; must contain "
    "`{successful_previous_attempt}`",
    "feedback_template": "how the scorer's feedback enters the teacher prompt; must contain `{feedback_raw}`",
    "token_records": "samples per step whose per-token teacher, baseline and student log-probs and SDPO and CREDIT "
    "rewards go to `token_records.jsonl` for the credit report (`python -m credit_plugin.report RUN_DIR`); 0: off",
    "token_records_dir": "folder of `token_records.jsonl`; null: `trainer.default_local_dir` (the tiny demo sets "
    "its run folder)",
}


def _type_name(annotation: object) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "").replace("NoneType", "None")


def _default(value: object) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return "`" + value.replace("\n", "\\n") + "`"
    return f"`{value}`"


def render() -> str:
    """The Markdown reference; SystemExit naming any field without a description."""
    fields = dataclasses.fields(CreditConfig)
    missing = [field.name for field in fields if field.name not in DESCRIPTIONS]
    if missing:
        raise SystemExit(f"describe credit.{missing} in DESCRIPTIONS of scripts/gen_config_doc.py, then rerun it")
    hints = typing.get_type_hints(CreditConfig)
    rows = []
    for field in fields:
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        type_name = _type_name(hints[field.name]).replace("|", "\\|")
        description = DESCRIPTIONS[field.name].replace("|", "\\|")
        rows.append(f"| `credit.{field.name}` | {type_name} | {_default(default)} | {description} |")
    return "\n".join(
        [
            "# Configuration reference: the `credit:` section",
            "",
            "<!-- Generated by scripts/gen_config_doc.py from credit_plugin.config.CreditConfig.",
            "     Do not edit by hand: rerun the script. -->",
            "",
            "Set any option on the command line (`credit.contrast_coef=0.5`) or in a recipe; the defaults live in",
            "`credit_plugin/conf/credit_defaults.yaml`. An unknown key is an error naming the closest option, a value",
            "out of range an error naming the option. What each option does to the token reward is in",
            "[method.md](method.md); verl's own options (batch sizes, rollout, FSDP, ...) are verl's `ppo_trainer`.",
            "",
            "| option | type | default | meaning |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if docs/configuration.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is stale: run python scripts/gen_config_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
