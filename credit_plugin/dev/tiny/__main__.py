"""``python -m credit_plugin.dev.tiny OUT_DIR``: write the tiny task's parquet files and build the tiny model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from credit_plugin.dev.tiny.model import STAMP_FILE, build_tiny_model
from credit_plugin.dev.tiny.task import write_parquet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m credit_plugin.dev.tiny", description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--n-val", type=int, default=64)
    args = parser.parse_args(argv)
    train, val = write_parquet(args.out_dir / "data", args.n_train, args.n_val, args.seed)
    model_dir = build_tiny_model(args.out_dir / "model", seed=args.seed)
    stamp = json.loads((model_dir / STAMP_FILE).read_text())
    print(json.dumps({"train": str(train), "val": str(val), "model": str(model_dir), **stamp}, indent=2))


if __name__ == "__main__":
    main()
