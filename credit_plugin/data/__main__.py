"""``python -m credit_plugin.data prepare --task T --src S --out DIR``: see :mod:`credit_plugin.data`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from credit_plugin.data import TASKS, sciknoweval
from credit_plugin.data.common import ON_MALFORMED, Report, load_rows, write_split

# Hub split names when --src is a dataset name (SciKnowEval and LiveCodeBench publish a single "test" split).
DEFAULT_HUB_SPLIT = {"sciknoweval": "test", "toolalpaca": "train", "livecodebench": "test"}


def prepare(args: argparse.Namespace) -> dict:
    """Convert, write ``train.parquet``, ``test.parquet`` and ``report.json`` under ``args.out``; returns the report."""
    report = Report(task=args.task, on_malformed=args.on_malformed)
    split = args.split or DEFAULT_HUB_SPLIT[args.task]
    rows = load_rows(args.src, split=split, config=args.config)
    seed = args.seed
    if args.task == "sciknoweval":
        domains = tuple(args.domains) if args.domains else sciknoweval.DOMAINS
        val_fraction = 0.1 if args.val_fraction is None else args.val_fraction
        splits = sciknoweval.convert(rows, report, val_fraction=val_fraction, seed=seed, domains=domains)
    elif args.task == "toolalpaca":
        val_rows = load_rows(args.val_src, split=split, config=args.config) if args.val_src else None
        val_fraction = 0.1 if args.val_fraction is None else args.val_fraction
        splits = TASKS["toolalpaca"].convert(rows, report, val_rows=val_rows, val_fraction=val_fraction, seed=seed)
    else:
        val_fraction = 0.0 if args.val_fraction is None else args.val_fraction
        splits = TASKS["livecodebench"].convert(rows, report, val_fraction=val_fraction, seed=seed, since=args.since)
    report.check()
    out = Path(args.out)
    result = report.as_dict()
    for name, split_rows in splits.items():
        write_split(split_rows, out / f"{name}.parquet")
        result[f"{name}_rows"] = len(split_rows)
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"[{args.task}] {result['train_rows']} train / {result['test_rows']} test rows in {out}; "
        f"filtered {sum(report.filtered.values())}, malformed {len(report.malformed)} (see {out / 'report.json'})"
    )
    return result


def _check_task_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options that the chosen task does not use, rather than ignoring them."""
    only = {"domains": "sciknoweval", "val_src": "toolalpaca", "since": "livecodebench"}
    for option, task in only.items():
        if getattr(args, option) is not None and args.task != task:
            parser.error(f"--{option.replace('_', '-')} applies to --task {task} only")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m credit_plugin.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("prepare", help="convert an upstream dataset to verl parquet files")
    sub.add_argument("--task", required=True, choices=sorted(TASKS))
    sub.add_argument("--src", required=True, help="local .json/.jsonl/.parquet file or dataset-hub name")
    sub.add_argument("--out", required=True, help="output folder for train.parquet, test.parquet, report.json")
    sub.add_argument("--on-malformed", choices=ON_MALFORMED, default="skip", help="skip (and report) or fail")
    sub.add_argument("--val-fraction", type=float, help="held out for evaluation (default 0.1; livecodebench 0)")
    sub.add_argument("--seed", type=int, default=0, help="seed of the held-out selection")
    sub.add_argument("--split", help="hub split when --src is a dataset name")
    sub.add_argument("--config", help="hub configuration when --src is a dataset name")
    sub.add_argument("--domains", nargs="+", choices=sciknoweval.DOMAINS, help="sciknoweval: domains to keep")
    sub.add_argument("--val-src", help="toolalpaca: evaluation file (e.g. eval_simulated.json)")
    sub.add_argument("--since", help="livecodebench: keep problems with contest_date >= YYYY-MM-DD")
    args = parser.parse_args(argv)
    _check_task_options(sub, args)
    prepare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
