"""``make learn``: does the policy get better? GRPO, SDPO and CREDIT variants side by side on the tiny task.

Every run is verl's own ``main_ppo`` on the tiny CPU recipe (``recipes/tiny_cpu``), started through the demo
launcher with the same data, model, step budget and seeds; only the algorithm overrides differ. Measured per run:

- held-out success **before and after** training on a fixed validation set that never occurs in training:
  *sampled* (verl's own validation, ``n`` samples per prompt at the rollout temperature, ``val-core/.../mean@n``)
  and *greedy* (the initial model and the final actor's Hugging Face checkpoint, decoded greedily with the
  task's verifier);
- per step: training reward, policy entropy, response length, and for distillation the mean and positive
  fraction of the token advantages.

Writes ``<out>/results.json`` (every run and step), ``<out>/results.md`` (the table, mean and spread over seeds)
and ``<out>/learning.png`` (curves averaged over seeds). ``--quick`` runs two short runs (GRPO, CREDIT at logit
level), for CI.

``--testbed`` (``make learn-testbed``) runs the controlled testbed instead (``credit_plugin.dev.tiny.testbed``,
``docs/method.md``): feedback that only locates the mistake, and a planted input-generic shortcut (``Sure.``
before the answer, made likely by the reprompt's wording whatever the input, ignored by the verifier). Per run it
adds the held-out shortcut rate before and after (greedy and sampled), and from the trainer's token records of
every sample: the shortcut's rate over training and the mean SDPO and CREDIT token reward on the shortcut's
token against the answer's digits. Writes ``<out>/results.{json,md}``, ``learning.png`` and ``testbed.png``
(default ``runs/learn-testbed``). ``--testbed --quick``: SDPO at logit level and CREDIT, 2 steps, a 100-step
pre-training (CI).

What it shows: whether an objective moves held-out success of a small model beyond the spread between seeds,
and whether it collapses (entropy and length up, reward down). What it does not show: anything about large
models, long training or tasks where feedback carries less than the answer (see README and docs/method.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("VERL_PLATFORM", "cpu")
from credit_plugin.dev.tiny.model import RL_KINDS  # noqa: E402  (after the platform choice, as the demo)

REPO = Path(__file__).resolve().parents[1]
VAL_SAMPLES = 4


def load_demo():
    """The tiny recipe's launcher (``recipes/tiny_cpu/demo.py``), which runs ``main_ppo`` and streams metrics."""
    spec = importlib.util.spec_from_file_location("tiny_cpu_demo", REPO / "recipes/tiny_cpu/demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Variant:
    """One arm of the comparison: a base algorithm of the demo and its extra overrides."""

    name: str
    algo: str
    overrides: tuple[str, ...] = ()


def credit(name: str, *overrides: str) -> Variant:
    return Variant(name, "credit", overrides)


# Switches the tiny recipe to verl's colocate_async trainer with CREDIT's steps (also bench/run.py's async_step).
ASYNC_MODE = ("trainer.v1.trainer_mode=credit_colocate_async", "trainer.v1.colocate_async.num_warmup_batches=1")
LOGIT_LEVEL = ("credit.topk=100", "credit.distillation_add_tail=true", "credit.alpha=0.5", "credit.is_clip=2.0")


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("grpo", "grpo"),
        Variant("sdpo", "sdpo"),
        credit("credit"),  # the defaults of credit_defaults.yaml
        credit("credit_logprob_l1", "credit.contrast_form=logprob", "credit.contrast_coef=1.0"),
        credit("credit_logprob_l0.25", "credit.contrast_form=logprob", "credit.contrast_coef=0.25"),
        credit("credit_reward_l1", "credit.contrast_form=reward", "credit.contrast_coef=1.0"),
        credit("credit_reward_l0.5", "credit.contrast_form=reward", "credit.contrast_coef=0.5"),
        credit("credit_reward_l0.25", "credit.contrast_form=reward", "credit.contrast_coef=0.25"),
        credit("credit_reward_l0.1", "credit.contrast_form=reward", "credit.contrast_coef=0.1"),
        credit("credit_pmi_l1", "credit.contrast_form=pmi", "credit.contrast_coef=1.0"),
        credit("credit_bounded_l1", "credit.contrast_form=bounded", "credit.contrast_coef=1.0"),
        credit("credit_bounded_l0.25", "credit.contrast_form=bounded", "credit.contrast_coef=0.25"),
        credit("credit_pmi_l0.25", "credit.contrast_form=pmi", "credit.contrast_coef=0.25"),
        credit(
            "credit_logprob_l1_centred",
            "credit.contrast_form=logprob",
            "credit.contrast_coef=1.0",
            "credit.contrast_centering=batch",
        ),
        # Logit level (docs/method.md, "Logit level"): SDPO's published loss (top-100 of the student's ids, which
        # here is 100 of the 512-token vocabulary, tail bucket, alpha 0.5, importance clip 2), and CREDIT's
        # default contrast on the same loss.
        Variant("sdpo_logit", "sdpo", ("credit.granularity=logit", *LOGIT_LEVEL)),
        credit("credit_logit", "credit.granularity=logit", *LOGIT_LEVEL),
        credit("credit_logit_l1", "credit.granularity=logit", *LOGIT_LEVEL, "credit.contrast_coef=1.0"),
        # CREDIT's defaults under verl's colocate_async trainer (docs/method.md, "Asynchronous trainers"): one batch
        # of prompts generated ahead of training, so each step trains on responses begun under older weights
        credit("credit_colocate_async", *ASYNC_MODE),
    )
}
DEFAULT_VARIANTS = (
    "grpo",
    "sdpo",
    "credit",
    "credit_reward_l1",
    "sdpo_logit",
    "credit_logit",
    "credit_colocate_async",
)
# The lambda sweep of every form, one seed (``make learn-sweep``; its runs join the same results file).
SWEEP_VARIANTS = (
    "credit_reward_l0.5",
    "credit_reward_l0.1",
    "credit_logprob_l1",
    "credit_logprob_l0.25",
    "credit_pmi_l1",
    "credit_pmi_l0.25",
)
# Quick modes (CI): the bench's whole pipeline on two arms each; between them they run SDPO and CREDIT at logit
# level through main_ppo on FSDP, so the end-to-end tests need no separate run for that.
QUICK_VARIANTS = ("grpo", "credit_logit")
# The controlled testbed's arms (``--testbed``) and its quick mode's.
TESTBED_VARIANTS = ("grpo", "sdpo", "credit", "credit_reward_l1")
TESTBED_QUICK_VARIANTS = ("sdpo_logit", "credit")
# The testbed's sweep (``--testbed --sweep``, first seed): other lambdas and forms, and the bounded form, whose floor
# stops the reward form's unbounded credit on tokens the swapped prompts make unlikely (docs/method.md).
TESTBED_SWEEP_VARIANTS = (
    "credit_bounded_l0.25",
    "credit_bounded_l1",
    # SDPO's published logit-level loss and CREDIT's default contrast on it, and at lambda 1
    "sdpo_logit",
    "credit_logit",
    "credit_logit_l1",
    "credit_reward_l0.5",
    "credit_logprob_l0.25",
    "credit_pmi_l0.25",
)
# The testbed's budget: 12 steps (the shortcut spreads under SDPO within them).
TESTBED_STEPS = 12


@dataclass
class Setting:
    """The shared budget of every run."""

    steps: int = 16
    prompts_per_step: int = 16
    samples_per_prompt: int = 4
    lr: float = 5e-4
    n_train: int = 512
    n_val: int = 128
    kinds: tuple[str, ...] = RL_KINDS
    val_samples: int = VAL_SAMPLES
    extra: list[str] = field(default_factory=list)

    def overrides(self, seed: int, testbed: bool = False) -> list[str]:
        testbed_overrides = []
        if testbed:
            from credit_plugin.dev.tiny.testbed import REWARD_FUNCTION

            testbed_overrides = [
                f"reward.custom_reward_function.path={REWARD_FUNCTION}",
                # no sample is a demonstration (a sibling's solution holds the answer): every teacher context is
                # the narrowing feedback
                "credit.success_threshold=2.0",
                # the token records of every sample: the shortcut's rate and credit per step
                f"credit.token_records={self.prompts_per_step * self.samples_per_prompt}",
            ]
        return [
            f"data.train_batch_size={self.prompts_per_step}",
            f"actor_rollout_ref.actor.ppo_mini_batch_size={self.prompts_per_step}",
            f"actor_rollout_ref.rollout.n={self.samples_per_prompt}",
            f"actor_rollout_ref.actor.optim.lr={self.lr}",
            f"data.seed={seed}",
            f"actor_rollout_ref.rollout.seed={seed}",
            f"credit.negative_seed={seed}",
            "trainer.val_before_train=true",
            f"trainer.test_freq={self.steps}",
            f"actor_rollout_ref.rollout.val_kwargs.n={self.val_samples}",
            "actor_rollout_ref.rollout.val_kwargs.do_sample=true",
            "actor_rollout_ref.rollout.val_kwargs.temperature=1.0",
            f"trainer.save_freq={self.steps}",
            "actor_rollout_ref.actor.checkpoint.save_contents=[model,hf_model]",
            *testbed_overrides,
            *self.extra,
        ]


def greedy_success(model_dir: Path, tokenizer_dir: Path, val_file: Path) -> float:
    """Fraction of the validation prompts the model at ``model_dir`` answers correctly, decoding greedily."""
    import datasets
    import torch
    import transformers

    from credit_plugin.dev.tiny.model import chat_prompt_ids
    from credit_plugin.dev.tiny.task import compute_score

    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = datasets.Dataset.from_parquet(str(val_file)).to_list()
    prompts = [chat_prompt_ids(tokenizer, row["prompt"][-1]["content"]) for row in rows]
    width = max(map(len, prompts))
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    attention_mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=False,
            max_new_tokens=24,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    scores = [
        compute_score(row["data_source"], text, row["reward_model"]["ground_truth"], row["extra_info"])["score"]
        for row, text in zip(rows, texts, strict=True)
    ]
    return sum(scores) / len(scores)


def _series(records: list[dict], key: str) -> list[float | None]:
    return [record.get(key) for record in records]


def _first_last(values: list[float | None], part: float = 0.25) -> tuple[float | None, float | None]:
    """Means of the first and last ``part`` of the steps that have a value."""
    present = [value for value in values if isinstance(value, int | float) and math.isfinite(value)]
    if not present:
        return None, None
    width = max(1, round(len(present) * part))
    return statistics.fmean(present[:width]), statistics.fmean(present[-width:])


def summarise_run(metrics_path: Path, steps: int, val_samples: int) -> dict:
    """Per-step curves and held-out sampled success before/after from one run's verl metrics file."""
    records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    val_key = next(
        (
            key
            for record in records
            for key in record["data"]
            if key.startswith("val-core/") and f"@{val_samples}" in key and "/mean@" in key
        ),
        None,
    )
    val = [(record["step"], record["data"][val_key]) for record in records if val_key in record["data"]]
    train = [record["data"] for record in records if "critic/score/mean" in record["data"]]
    return {
        "val_key": val_key,
        "sampled_before": val[0][1] if val and val[0][0] == 0 else None,
        "sampled_after": val[-1][1] if val and val[-1][0] == steps else None,
        "reward": _series(train, "critic/score/mean"),
        "entropy": _series(train, "actor/entropy"),
        "response_length": _series(train, "response_length/mean"),
        "advantage_token_mean": _series(train, "credit/advantage/token_mean"),
        "advantage_positive_fraction": _series(train, "credit/advantage/positive_fraction"),
    }


def _mean_spread(values: list[float | None]) -> str:
    present = [value for value in values if value is not None]
    if not present:
        return "-"
    if len(present) == 1:
        return f"{present[0]:.3f}"
    return f"{statistics.fmean(present):.3f} ± {(max(present) - min(present)) / 2:.3f}"


COLUMNS = (
    ("held-out sampled: before -> after", "sampled"),
    ("held-out greedy: before -> after", "greedy"),
    ("train reward: first -> last quarter", "reward"),
    ("entropy: first -> last quarter", "entropy"),
    ("response length: first -> last quarter", "response_length"),
    ("mean token advantage", "advantage_token_mean"),
)


TESTBED_COLUMNS = (
    ("held-out success, sampled: before -> after", "success_sampled"),
    ("held-out success, greedy: before -> after", "success_greedy"),
    ("held-out shortcut rate, sampled: before -> after", "shortcut_sampled"),
    ("held-out shortcut rate, greedy: before -> after", "shortcut_greedy"),
    ("train shortcut rate: first -> last quarter", "shortcut_rate"),
    ("SDPO reward on the shortcut token / on answer digits", "sdpo"),
    ("CREDIT reward on the shortcut token / on answer digits", "credit"),
    ("train reward: first -> last quarter", "reward"),
)


def testbed_cells(runs: list[dict]) -> list[str]:
    """The testbed table's cells of one variant (mean ± half-range over seeds)."""
    cells = []
    for _, key in TESTBED_COLUMNS:
        if key in ("success_sampled", "success_greedy", "shortcut_sampled", "shortcut_greedy"):
            before = [run["eval_before"][key] for run in runs]
            after = [run["eval_after"].get(key) if run.get("eval_after") else None for run in runs]
            cells.append(f"{_mean_spread(before)} -> {_mean_spread(after)}")
        elif key in ("sdpo", "credit"):
            shortcut = [_first_last(run[f"{key}_shortcut"], 1.0)[0] for run in runs]
            answer = [_first_last(run[f"{key}_answer"], 1.0)[0] for run in runs]
            cells.append(f"{_mean_spread(shortcut)} / {_mean_spread(answer)}")
        else:
            pairs = [_first_last(run[key]) for run in runs]
            cells.append(f"{_mean_spread([p[0] for p in pairs])} -> {_mean_spread([p[1] for p in pairs])}")
    return cells


def table(results: dict) -> str:
    """Markdown table: one row per variant, each cell the mean ± half-range over seeds."""
    testbed = results.get("testbed", False)
    columns = TESTBED_COLUMNS if testbed else COLUMNS
    lines = [
        "| variant | seeds | " + " | ".join(title for title, _ in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for name, runs in results["runs"].items():
        done = [run for run in runs if "error" not in run]
        cells = testbed_cells(done) if testbed else []
        for _, key in () if testbed else COLUMNS:
            if key in ("sampled", "greedy"):
                before = [run[f"{key}_before"] for run in done]
                after = [run[f"{key}_after"] for run in done]
                delta = [b - a for a, b in zip(before, after, strict=True) if a is not None and b is not None]
                cells.append(f"{_mean_spread(before)} -> {_mean_spread(after)} (Δ {_mean_spread(delta)})")
            elif key == "advantage_token_mean":
                cells.append(_mean_spread([_first_last(run[key], 1.0)[0] for run in done]))
            else:
                pairs = [_first_last(run[key]) for run in done]
                cells.append(f"{_mean_spread([p[0] for p in pairs])} -> {_mean_spread([p[1] for p in pairs])}")
        failed = len(runs) - len(done)
        lines.append(f"| {name} | {len(done)}{f' ({failed} failed)' if failed else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Training reward, entropy, response length and held-out success per variant, averaged over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("reward", "train reward"), ("entropy", "entropy"), ("response_length", "response length"))
    figure, axes = plt.subplots(1, len(keys) + 1, figsize=(5 * (len(keys) + 1), 4))
    for name, runs in results["runs"].items():
        done = [run for run in runs if "error" not in run]
        if not done:
            continue
        for axis, (key, title) in zip(axes, keys, strict=False):
            length = min(len(run[key]) for run in done)
            mean = [statistics.fmean(run[key][i] for run in done if run[key][i] is not None) for i in range(length)]
            axis.plot(range(1, length + 1), mean, label=name)
            axis.set_title(title)
            axis.set_xlabel("step")
        before = statistics.fmean(run["sampled_before"] for run in done if run["sampled_before"] is not None)
        after = statistics.fmean(run["sampled_after"] for run in done if run["sampled_after"] is not None)
        axes[-1].plot([0, results["setting"]["steps"]], [before, after], marker="o", label=name)
    axes[-1].set_title(f"held-out success (sampled, mean@{results['setting']['val_samples']})")
    axes[-1].set_xlabel("step")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def plot_testbed(results: dict, path: Path) -> None:
    """Per step, averaged over seeds: the shortcut's rate in the sampled responses, and the SDPO and CREDIT token
    reward on the shortcut token and on the answer digits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (
        ("shortcut_rate", "shortcut rate (sampled, training)"),
        ("sdpo_shortcut", "SDPO reward: shortcut token"),
        ("credit_shortcut", "CREDIT reward: shortcut token"),
        ("sdpo_answer", "SDPO reward: answer digits"),
        ("credit_answer", "CREDIT reward: answer digits"),
    )
    figure, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 4))
    for name, runs in results["runs"].items():
        done = [run for run in runs if "error" not in run and run.get("shortcut_rate")]
        for axis, (key, title) in zip(axes, keys, strict=True):
            length = min((len(run[key]) for run in done), default=0)
            points = [
                (i + 1, statistics.fmean(values))
                for i in range(length)
                if (values := [run[key][i] for run in done if run[key][i] is not None])
            ]
            if points:
                axis.plot(*zip(*points, strict=True), label=name, marker=".")
            axis.set_title(title, fontsize=9)
            axis.set_xlabel("step")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def summarise_testbed(records_path: Path, steps: int) -> dict:
    """Per-step shortcut rate and credit on shortcut/answer tokens from a run's token records (none for GRPO)."""
    from credit_plugin.dev.tiny.testbed import credit_by_token_kind
    from credit_plugin.report import latest_per_sample, read_jsonl

    per_step = credit_by_token_kind(latest_per_sample(read_jsonl(records_path)))
    keys = ("shortcut_rate", "sdpo_shortcut", "sdpo_answer", "credit_shortcut", "credit_answer")
    return {key: [per_step.get(step, {}).get(key) for step in range(1, steps + 1)] for key in keys}


def pending_runs(runs: dict[str, list[dict]], variants: list[str], seeds: list[int]) -> Iterator[tuple[int, str]]:
    """The ``(seed, variant)`` runs ``runs`` does not hold yet (each variant gets its list), seed-major: an
    interrupted bench still has every variant of the first seeds."""
    for name in variants:
        runs.setdefault(name, [])
    for seed in seeds:
        for name in variants:
            if not any(run["seed"] == seed for run in runs[name]):
                yield seed, name


def _earlier_runs(path: Path, setting: dict) -> dict[str, list[dict]]:
    """Finished runs of the same budget that earlier invocations left in ``path``, every variant and seed: an
    interrupted or extended bench (more ``--variants`` or ``--seeds``) only runs what is missing, and the
    table keeps what ran before."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("setting") != json.loads(json.dumps(setting)):
        return {}
    return {name: [run for run in runs if "error" not in run] for name, runs in earlier["runs"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=sorted(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default 1 2 (1 2 3 testbed)")
    parser.add_argument("--steps", type=int, default=None, help=f"default {Setting.steps} ({TESTBED_STEPS} testbed)")
    parser.add_argument("--lr", type=float, default=Setting.lr)
    parser.add_argument("--out", type=Path, default=None, help="default runs/learn (runs/learn-testbed)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="GRPO and CREDIT at logit level (with --testbed: SDPO at logit level and CREDIT), one seed, 2 steps (CI)",
    )
    parser.add_argument("--sweep", action="store_true", help="the lambda sweep of every form, first seed only")
    parser.add_argument(
        "--testbed", action="store_true", help="the controlled testbed (narrowing feedback, planted shortcut)"
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="where the tiny model is built or, when its stamp matches, reused (default <out>/assets/model; the "
        "demo's <assets>/model holds the same model)",
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    steps = args.steps or (TESTBED_STEPS if args.testbed else Setting.steps)
    setting = Setting(steps=steps, lr=args.lr, extra=args.overrides)
    variants, seeds = args.variants, args.seeds or ([1, 2, 3] if args.testbed else [1, 2])
    if args.testbed and args.variants == list(DEFAULT_VARIANTS):
        variants = list(TESTBED_VARIANTS)
    if args.sweep:
        variants, seeds = list(TESTBED_SWEEP_VARIANTS if args.testbed else SWEEP_VARIANTS), seeds[:1]
    if args.quick:
        variants, seeds = list(TESTBED_QUICK_VARIANTS if args.testbed else QUICK_VARIANTS), seeds[:1]
        setting = Setting(steps=2, prompts_per_step=4, n_train=32, n_val=8, lr=args.lr, extra=args.overrides)
    out = args.out or REPO / ("runs/learn-testbed" if args.testbed else "runs/learn")

    from credit_plugin.dev.tiny.model import TinyModelSpec, build_tiny_model
    from credit_plugin.dev.tiny.task import write_parquet

    demo = load_demo()
    assets = out / "assets"
    if args.testbed:
        from credit_plugin.dev.tiny import testbed

        # quick mode: a short pre-training, enough for the pipeline (CI), not for the measurement
        model = testbed.build_testbed_model(assets / "model", seed=0, pretrain_steps=100 if args.quick else 1500)
        train, val = testbed.write_testbed_parquet(assets / "data", setting.n_train, setting.n_val, seed=0)
        initial = testbed.evaluate(model, model, val, samples=setting.val_samples)
        initial_greedy = initial["success_greedy"]
    else:
        model = build_tiny_model(args.model_dir or assets / "model", seed=0, spec=TinyModelSpec())
        train, val = write_parquet(assets / "data", setting.n_train, setting.n_val, seed=0, kinds=setting.kinds)
        initial_greedy = greedy_success(model, model, val)
    results = {"setting": vars(setting), "testbed": args.testbed, "runs": {}}
    results["runs"] = _earlier_runs(out / "results.json", results["setting"])
    started = time.time()
    for seed, name in pending_runs(results["runs"], variants, seeds):
        variant = VARIANTS[name]
        root = out / name / f"seed{seed}"
        extra = [*variant.overrides, *setting.overrides(seed, testbed=args.testbed)]
        try:
            metrics = demo.run(variant.algo, root, (model, train, val), setting.steps, extra)
        except SystemExit as error:
            results["runs"][name].append({"seed": seed, "error": str(error)[-2000:]})
            continue
        run = {"seed": seed, **summarise_run(metrics, setting.steps, setting.val_samples)}
        final = root / variant.algo / "checkpoints" / f"global_step_{setting.steps}" / "actor" / "huggingface"
        run["greedy_before"] = initial_greedy
        if args.testbed:
            after = testbed.evaluate(final, model, val, samples=setting.val_samples) if final.exists() else {}
            run.update(eval_before=initial, eval_after=after, greedy_after=after.get("success_greedy"))
            run.update(summarise_testbed(root / variant.algo / "token_records.jsonl", setting.steps))
        else:
            run["greedy_after"] = greedy_success(final, model, val) if final.exists() else None
        results["runs"][name].append(run)
        (out / "results.json").write_text(json.dumps(results, indent=1))
    results["seconds"] = round(time.time() - started)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    markdown = table(results)
    (out / "results.md").write_text(markdown + "\n")
    plot(results, out / "learning.png")
    if args.testbed:
        plot_testbed(results, out / "testbed.png")
    print(markdown)
    print(
        f"\n{len(variants)} variants x {len(seeds)} seeds in {results['seconds']} s; {out}/results.json, "
        f"results.md, learning.png{', testbed.png' if args.testbed else ''}"
    )


if __name__ == "__main__":
    main()
