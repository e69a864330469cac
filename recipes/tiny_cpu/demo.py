"""Train CREDIT (or SDPO, or GRPO) on the embedded tiny task with verl's own ``main_ppo``, on CPU.

    python recipes/tiny_cpu/demo.py                       # CREDIT, recipes/tiny_cpu/credit.yaml
    python recipes/tiny_cpu/demo.py --algo sdpo --steps 4 # SDPO (credit.contrast_coef=0)
    python recipes/tiny_cpu/demo.py --compare             # CREDIT, SDPO and GRPO side by side
    python recipes/tiny_cpu/demo.py -- trainer.total_training_steps=3   # extra Hydra overrides
    python recipes/tiny_cpu/demo.py --megatron-tp 2       # actor and ref on verl's Megatron engine at TP=2

Each run writes ``<run-dir>/<algo>/metrics.jsonl`` (verl's file logger records), ``command.txt``, ``train.log`` and
``token_records.jsonl`` (4 samples a step, for ``python -m credit_plugin.report <run-dir>/<algo>``), and prints one
line per step. Run again in the same ``--run-dir`` after a crash, verl resumes from the latest
checkpoint (``trainer.save_freq``) and ``metrics.jsonl`` keeps the steps up to it.
The tiny model and parquet files are built once under ``<run-dir>/assets`` (or ``--assets``, to share them).
This is a development and CI recipe: the ``hf_cpu`` rollout generates with transformers; GPU users keep vLLM.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# This process only builds assets and watches the run, but importing the plugin loads verl: keep it on CPU.
os.environ.setdefault("VERL_PLATFORM", "cpu")
RECIPE_DIR = Path(__file__).resolve().parent
POLL_S = 2.0  # how often the metrics file is read while main_ppo runs
ALGOS = {
    "credit": [],
    "sdpo": ["credit.contrast_coef=0"],
    "grpo": ["algorithm.adv_estimator=grpo", "trainer.v1.trainer_mode=sync"],
}
# (metrics key, column title) shown per step; a missing key prints "-" (e.g. pMI for GRPO).
COLUMNS = [
    ("critic/score/mean", "reward"),
    ("credit/pmi_mean", "pMI"),
    ("credit/contrast_gap_mean", "contrast_gap"),
    ("credit/teacher/context_fraction", "ctx_frac"),
    ("response_length/mean", "resp_len"),
    ("actor/pg_loss", "pg_loss"),
    ("timing_s/step", "step_s"),
]


def prepare_assets(assets: Path, seed: int) -> tuple[Path, Path, Path]:
    """The tiny model (pre-trained for seconds, cached by seed) and the task's parquet files."""
    from credit_plugin.dev.tiny.model import RL_KINDS, build_tiny_model
    from credit_plugin.dev.tiny.task import write_parquet

    model = build_tiny_model(assets / "model", seed=seed)
    train, val = write_parquet(assets / "data", n_train=256, n_val=32, seed=seed, kinds=RL_KINDS)
    return model, train, val


def command(
    algo: str,
    run_dir: Path,
    model: Path,
    train: Path,
    val: Path,
    steps: int,
    extra: list[str],
    config: tuple[Path, str] = (RECIPE_DIR, "credit"),
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        "--config-path",
        str(config[0]),
        "--config-name",
        config[1],
        f"data.train_files={train}",
        f"data.val_files={val}",
        f"actor_rollout_ref.model.path={model}",
        f"trainer.total_training_steps={steps}",
        f"trainer.experiment_name={algo}",
        f"trainer.default_local_dir={run_dir / 'checkpoints'}",
        # the credit report's records next to metrics.jsonl: python -m credit_plugin.report <run-dir>/<algo>
        f"credit.token_records_dir={run_dir}",
        *ALGOS[algo],
        *extra,
    ]


def megatron_overrides(tensor_parallel: int, steps: int) -> list[str]:
    """Overrides that move the actor and ref from FSDP to verl's Megatron engine, at ``tensor_parallel`` ranks
    (one worker process each) on the CPU platform (needs credit_plugin's ``megatron-cpu`` extra)."""
    from credit_plugin.dev.cpu.megatron import MEGATRON_CPU_OVERRIDES

    return [
        *MEGATRON_CPU_OVERRIDES,
        "actor_rollout_ref.actor.strategy=megatron",
        # the recipe's FSDP sections have no field in verl's Megatron actor and ref configs
        "~actor_rollout_ref.actor.fsdp_config",
        "~actor_rollout_ref.ref.fsdp_config",
        f"actor_rollout_ref.actor.megatron.tensor_model_parallel_size={tensor_parallel}",
        # megatron-core's LR scheduler asserts a positive number of decay steps
        f"actor_rollout_ref.actor.optim.total_training_steps={steps}",
        f"trainer.n_gpus_per_node={tensor_parallel}",
        f"ray_kwargs.ray_init.num_gpus={tensor_parallel}",
    ]


def _format(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float | int) else str(value)


def _print_step(record: dict) -> None:
    data = record.get("data", record)
    cells = [f"{title}={_format(data.get(key))}" for key, title in COLUMNS]
    print(f"  step {record.get('step', data.get('training/global_step', '?'))}: " + "  ".join(cells), flush=True)


def resume_step(checkpoints: Path, extra: list[str]) -> int:
    """The step verl's ``resume_mode=auto`` resumes from (``latest_checkpointed_iteration.txt``), 0 for none."""
    latest = checkpoints / "latest_checkpointed_iteration.txt"
    if "trainer.resume_mode=disable" in extra or not latest.exists():
        return 0
    return int(latest.read_text().strip())


def keep_history(metrics: Path, step: int) -> int:
    """Truncate ``metrics`` to the records up to ``step`` (the resumed run logs the later ones again).

    verl's file logger opens its file for writing, so each attempt logs to its own file and :func:`_show_new`
    appends the attempt's records here: a resumed run keeps the steps before its checkpoint. Returns how
    many records were kept.
    """
    lines = metrics.read_text().splitlines() if metrics.exists() and step > 0 else []
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    metrics.write_text("".join(line + "\n" for line in kept))
    return len(kept)


def run(
    algo: str,
    run_root: Path,
    assets: tuple[Path, Path, Path],
    steps: int,
    extra: list[str],
    config: tuple[Path, str] = (RECIPE_DIR, "credit"),
    platform: str | None = "cpu",
) -> Path:
    """One ``main_ppo`` run (resumed from its latest checkpoint if any, as verl does); streams per-step metrics
    from its JSONL into ``metrics.jsonl`` and returns that path. ``config``: the Hydra config folder and name (this
    recipe by default; ``bench/smollm.py`` passes its GPU recipe); ``platform``: ``VERL_PLATFORM`` for the run, or
    None to leave verl's own detection (GPU)."""
    run_dir = run_root / algo
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics, attempt = run_dir / "metrics.jsonl", run_dir / "metrics.attempt.jsonl"
    resumed = resume_step(run_dir / "checkpoints", extra)
    kept = keep_history(metrics, resumed)
    attempt.unlink(missing_ok=True)
    argv = command(algo, run_dir, *assets, steps, extra, config)
    (run_dir / "command.txt").write_text(" ".join(argv) + "\n")
    env_vars = {
        **({"VERL_PLATFORM": platform} if platform else {}),
        "VERL_USE_EXTERNAL_MODULES": "credit_plugin",
        "VERL_FILE_LOGGER_PATH": str(attempt),
    }
    # Ray's workers get the variables through the runtime env as well as by inheritance.
    argv += [f"+ray_kwargs.ray_init.runtime_env.env_vars.{key}={value}" for key, value in env_vars.items()]
    env = {**os.environ, **env_vars, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0"}
    if not platform:
        # this process set VERL_PLATFORM=cpu for itself (see the top); a GPU run detects its platform
        env.pop("VERL_PLATFORM", None)
    resuming = f", resuming after step {resumed} ({kept} steps of history kept)" if resumed else ""
    print(f"[{algo}] verl.trainer.main_ppo, {steps} steps{resuming}; log: {run_dir / 'train.log'}", flush=True)
    start, shown = time.time(), 0
    with open(run_dir / "train.log", "a" if resumed else "w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        while process.poll() is None:
            time.sleep(POLL_S)
            shown = _show_new(attempt, metrics, shown)
        shown = _show_new(attempt, metrics, shown)
    if process.returncode != 0:
        tail = (run_dir / "train.log").read_text().splitlines()[-40:]
        raise SystemExit(f"[{algo}] main_ppo failed with exit code {process.returncode}:\n" + "\n".join(tail))
    print(f"[{algo}] done in {time.time() - start:.0f} s, {shown} steps, metrics: {metrics}", flush=True)
    return metrics


def _show_new(attempt: Path, metrics: Path, shown: int) -> int:
    """Print and append to ``metrics`` the complete lines of ``attempt`` past the first ``shown``."""
    if not attempt.exists():
        return shown
    text = attempt.read_text()
    lines = text.splitlines()[: text.count("\n")]  # a line being written has no newline yet
    with open(metrics, "a") as out:
        for line in lines[shown:]:
            _print_step(json.loads(line))
            out.write(line + "\n")
    return len(lines)


def _mean(records: list[dict], key: str) -> float | None:
    values = [record[key] for record in records if isinstance(record.get(key), int | float)]
    return sum(values) / len(values) if values else None


def compare(paths: dict[str, Path]) -> None:
    """Per algorithm: the training reward over the first half of the steps, then every column's mean over the
    last half (so the first two columns say whether the reward went up)."""
    reward_key, reward_title = COLUMNS[0]
    titles = [f"{reward_title} 1st", *(f"{title} 2nd" if key == reward_key else title for key, title in COLUMNS)]
    print("\nalgo    " + "".join(f"{title:>14}" for title in titles))
    for algo, path in paths.items():
        records = [json.loads(line).get("data", {}) for line in path.read_text().splitlines()]
        records = [record for record in records if reward_key in record]  # training steps (not validation)
        half = len(records) // 2
        values = [_mean(records[:half], reward_key), *(_mean(records[half:], key) for key, _ in COLUMNS)]
        print(f"{algo:<8}" + "".join(f"{'-':>14}" if value is None else f"{value:>14.4g}" for value in values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", choices=sorted(ALGOS), default="credit")
    parser.add_argument("--compare", action="store_true", help="run credit, sdpo and grpo and print a table")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/tiny_cpu"))
    parser.add_argument(
        "--assets", type=Path, default=None, help="tiny model and data folder (default <run-dir>/assets)"
    )
    parser.add_argument(
        "--megatron-tp",
        type=int,
        default=0,
        help="run the actor and ref on verl's Megatron engine at this tensor-parallel size (0: FSDP)",
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for main_ppo")
    args = parser.parse_args()
    if args.megatron_tp < 0:
        parser.error(f"--megatron-tp must be 0 (FSDP) or a tensor-parallel size, got {args.megatron_tp}")
    assets = prepare_assets(args.assets or args.run_dir / "assets", args.seed)
    algos = list(ALGOS) if args.compare else [args.algo]
    engine = megatron_overrides(args.megatron_tp, args.steps) if args.megatron_tp else []
    paths = {algo: run(algo, args.run_dir, assets, args.steps, [*engine, *args.overrides]) for algo in algos}
    compare(paths)


if __name__ == "__main__":
    main()
