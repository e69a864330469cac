"""Launch the paper's runs (GRPO, SDPO, CREDIT) on a verl cluster through verl's own ``main_ppo``.

    python recipes/paper/launch.py run --task sciknoweval --algo credit --model qwen3_8b
    python recipes/paper/launch.py compare --task toolalpaca --model olmo3_7b_instruct --seed 1
    python recipes/paper/launch.py sweep --task sciknoweval --model qwen3_8b --lambdas 0.25 0.5 1 --ks 1 2 4
    python recipes/paper/launch.py run ... --dry-run -- trainer.nnodes=2 data.train_files=/data/train.parquet

``run`` is one recipe: ``recipes/paper/<task>.yaml`` with the ``algo`` and ``llm`` overlays. ``compare`` runs GRPO,
SDPO and CREDIT one after another with the same data, seed and step budget, then writes the side-by-side table
and plot (``recipes/paper/report.py``). ``sweep`` runs CREDIT over ``credit.contrast_coef`` (lambda) x
``credit.num_negatives`` (K). Everything after ``--`` is passed to Hydra unchanged.

Runs of one comparison share ``trainer.project_name`` and a group: verl's file logger writes
``<run-root>/<group>/<run>.jsonl``, tensorboard ``<run-root>/<group>/tensorboard/<run>`` (one ``--logdir``
shows the group), and wandb gets ``WANDB_RUN_GROUP=<group>``. Run this on the Ray head node (or a single
machine): ``main_ppo`` joins a running cluster through ``RAY_ADDRESS`` (docs/cluster.md).
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
REPORT = CONFIG_DIR / "report.py"
TASKS = ("sciknoweval", "toolalpaca", "livecodebench")
ALGOS = ("grpo", "sdpo", "credit")
MODELS = tuple(sorted(path.stem for path in (CONFIG_DIR / "llm").glob("*.yaml")))
# SDPO's per-task settings of the logit-level loss (algo/sdpo.yaml, algo/credit.yaml) where they differ from
# science and tool use: rich-feedback code distils the top 20 ids by reverse KL (the lr 1e-6 without warm-up is
# livecodebench.yaml's, for every arm). GRPO does not read them.
LOGIT_TASK_OVERRIDES = {"livecodebench": ("credit.topk=20", "credit.alpha=1.0")}
# Overrides a subcommand sets itself: passed after `--` they would silently turn SDPO into CREDIT or flatten a grid.
VARIED = {
    "run": ("algo=", "llm="),
    "compare": ("algo=", "llm=", "credit.contrast_coef="),
    "sweep": ("algo=", "llm=", "credit.contrast_coef=", "credit.num_negatives="),
}


def run_name(task: str, algo: str, model: str, seed: int, extra: str = "") -> str:
    return f"{task}-{model}-{algo}{extra}-s{seed}"


def overrides(
    task: str,
    algo: str,
    model: str,
    seed: int,
    name: str,
    group: str,
    run_root: Path,
    steps: int | None = None,
    data_dir: Path | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Hydra overrides and environment of one run (the environment reaches Ray's workers through the runtime env)."""
    run_root = run_root.resolve()
    if task not in TASKS or algo not in ALGOS or model not in MODELS:
        raise ValueError(f"task/algo/model must be in {TASKS} / {ALGOS} / {MODELS}, got {task}/{algo}/{model}")
    args = [
        f"algo={algo}",
        f"llm={model}",
        f"data.seed={seed}",
        f"actor_rollout_ref.rollout.seed={seed}",
        f"actor_rollout_ref.actor.data_loader_seed={seed}",
        f"trainer.experiment_name={name}",
        f"trainer.default_local_dir={run_root / group / 'checkpoints' / name}",
    ]
    if algo != "grpo":
        args += LOGIT_TASK_OVERRIDES.get(task, ())
    if steps is not None:
        args.append(f"trainer.total_training_steps={steps}")
    if data_dir is not None:
        # absolute: verl reads the files in a Ray actor whose working directory is not the caller's
        data_dir = data_dir.resolve()
        args += [f"data.train_files={data_dir / 'train.parquet'}", f"data.val_files={data_dir / 'test.parquet'}"]
    env = {
        "VERL_USE_EXTERNAL_MODULES": "credit_plugin",
        "VERL_FILE_LOGGER_PATH": str(run_root / group / f"{name}.jsonl"),
        "TENSORBOARD_DIR": str(run_root / group / "tensorboard" / name),
        "WANDB_RUN_GROUP": group,
    }
    args += [f"+ray_kwargs.ray_init.runtime_env.env_vars.{key}={value}" for key, value in env.items()]
    return args, env


def command(task: str, hydra_overrides: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        "--config-path",
        str(CONFIG_DIR),
        "--config-name",
        task,
        *hydra_overrides,
    ]


def launch(argv: list[str], env: dict[str, str], dry_run: bool) -> None:
    print(" ".join(argv), flush=True)
    if dry_run:
        return
    Path(env["VERL_FILE_LOGGER_PATH"]).parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(argv, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, check=True)


def plan(args: argparse.Namespace) -> list[tuple[list[str], dict[str, str], str]]:
    """``(command, environment, run name)`` of every run the subcommand asks for."""
    group = args.group or f"{args.task}-{args.model}-s{args.seed}"
    runs = []
    if args.command == "run":
        variants = [(args.algo, "", [])]
    elif args.command == "compare":
        variants = [(algo, "", []) for algo in ALGOS]
    else:
        group = args.group or f"{args.task}-{args.model}-sweep-s{args.seed}"
        variants = [
            ("credit", f"-lam{lam:g}-k{k}", [f"credit.contrast_coef={lam}", f"credit.num_negatives={k}"])
            for lam, k in itertools.product(args.lambdas, args.ks)
        ]
    for algo, suffix, extra in variants:
        name = run_name(args.task, algo, args.model, args.seed, suffix)
        hydra, env = overrides(
            args.task, algo, args.model, args.seed, name, group, args.run_root, steps=args.steps, data_dir=args.data
        )
        runs.append((command(args.task, [*hydra, *extra, *args.overrides]), env, name))
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    subs = {
        "run": commands.add_parser("run", help="one recipe"),
        "compare": commands.add_parser("compare", help="GRPO, SDPO and CREDIT with the same data, seed, budget"),
        "sweep": commands.add_parser("sweep", help="CREDIT over lambda x K"),
    }
    for name, sub in subs.items():
        sub.add_argument("--task", required=True, choices=TASKS)
        sub.add_argument("--model", default="qwen3_8b", choices=MODELS)
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--steps", type=int, help="trainer.total_training_steps (the recipe's budget if unset)")
        sub.add_argument("--data", type=Path, help="folder of train.parquet and test.parquet (default data/<task>)")
        sub.add_argument("--run-root", type=Path, default=Path("runs/paper"))
        sub.add_argument("--group", help="group name shared by the runs (default: task-model-seed)")
        sub.add_argument("--dry-run", action="store_true", help="print the commands only")
        if name == "run":
            sub.add_argument("--algo", required=True, choices=ALGOS)
        if name == "sweep":
            sub.add_argument("--lambdas", type=float, nargs="+", default=[0.25, 0.5, 1.0])
            sub.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4])
        sub.add_argument("overrides", nargs="*", help="extra Hydra overrides (after --)")
    args = parser.parse_args(argv)
    varied = VARIED[args.command]
    clashing = [override for override in args.overrides if override.lstrip("+~").startswith(varied)]
    if clashing:
        parser.error(f"{args.command} sets {[v.rstrip('=') for v in varied]} itself; remove {clashing}")
    args.data = args.data or Path("data") / args.task
    runs = plan(args)
    for argv_, env, _ in runs:
        launch(argv_, env, args.dry_run)
    if args.command != "run" and not args.dry_run:
        logs = [env["VERL_FILE_LOGGER_PATH"] for _, env, _ in runs]
        out = Path(logs[0]).parent / "compare"
        subprocess.run([sys.executable, str(REPORT), *logs, "--out", str(out)], check=True)


if __name__ == "__main__":
    main()
