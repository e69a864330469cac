"""Side-by-side table and plot of runs from verl's file-logger JSONL (one ``{"step", "data"}`` line per step).

    python recipes/paper/report.py runs/paper/<group>/*.jsonl --out runs/paper/<group>/compare

Validation accuracy is verl's ``val-core/<data_source>/acc/mean@N`` (avg@N), averaged over the data sources a
step reports (SciKnowEval's four domains count equally). Wall time is the running sum of ``timing_s/step``
(generation, teacher pass, update and the step's validation); the validation before training sits at 0.
Writes ``table.md`` and ``accuracy.png`` (accuracy vs step and vs wall time) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

VAL_KEY = re.compile(r"^val-core/(.+)/acc/mean@(\d+)$")


@dataclass
class Run:
    """One run's validation curve ``(step, wall_s, accuracy)`` and its per-step times."""

    name: str
    validations: list[tuple[int, float, float]] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    teacher_times: list[float] = field(default_factory=list)


def load_run(path: Path, name: str | None = None) -> Run:
    """Parse one JSONL log; a line that is not verl's ``{"step", "data"}`` record raises, naming the line."""
    run = Run(name or path.stem)
    wall = 0.0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step, data = int(record["step"]), record["data"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a verl file-logger record ({exc})") from None
        if "timing_s/step" in data:
            wall += float(data["timing_s/step"])
            run.step_times.append(float(data["timing_s/step"]))
            run.teacher_times.append(float(data.get("timing_s/teacher", 0.0)))
        accuracies = [float(value) for key, value in data.items() if VAL_KEY.match(key)]
        if accuracies:
            run.validations.append((step, wall, sum(accuracies) / len(accuracies)))
    return run


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def table(runs: list[Run]) -> str:
    """Markdown table: validation accuracy (first, last, best), steps, wall time, step time and its ratio."""
    reference = _mean(runs[0].step_times) if runs else None
    columns = ["run", "val acc first", "val acc last", "val acc best", "steps", "wall h", "s/step"]
    columns += ["step vs first", "teacher share"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for run in runs:
        accs = [acc for _, _, acc in run.validations]
        step_s, teacher_s = _mean(run.step_times), _mean(run.teacher_times)
        cells = [
            run.name,
            *([f"{accs[0]:.4f}", f"{accs[-1]:.4f}", f"{max(accs):.4f}"] if accs else ["-"] * 3),
            str(len(run.step_times)),
            f"{sum(run.step_times) / 3600:.2f}",
            f"{step_s:.1f}" if step_s is not None else "-",
            f"{step_s / reference:.2f}" if step_s and reference else "-",
            f"{teacher_s / step_s:.2f}" if step_s else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], path: Path) -> Path:
    """Validation accuracy vs step (left) and vs wall-clock hours (right), one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for run in runs:
        steps, walls, accs = zip(*run.validations, strict=True) if run.validations else ((), (), ())
        by_step.plot(steps, accs, marker="o", label=run.name)
        by_time.plot([wall / 3600 for wall in walls], accs, marker="o", label=run.name)
    by_step.set(xlabel="training step", ylabel="validation accuracy (avg@N)")
    by_time.set(xlabel="wall time (h)")
    by_step.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", type=Path, help="verl file-logger JSONL files, the first is the reference")
    parser.add_argument("--out", type=Path, required=True, help="folder for table.md and accuracy.png")
    args = parser.parse_args(argv)
    runs = [load_run(path) for path in args.logs]
    text = table(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text)
    plot(runs, args.out / "accuracy.png")
    print(text + f"\nplot: {args.out / 'accuracy.png'}")


if __name__ == "__main__":
    main()
