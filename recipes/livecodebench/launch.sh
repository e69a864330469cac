#!/usr/bin/env bash
# The paper's livecodebench runs: recipes/paper/livecodebench.yaml with an algorithm and a model overlay.
#   recipes/livecodebench/launch.sh --algo credit --model qwen3_8b [--seed 0] [--data DIR] [--dry-run] [-- hydra overrides]
#   recipes/livecodebench/launch.sh compare --model olmo3_7b_instruct   # GRPO, SDPO and CREDIT side by side
#   recipes/livecodebench/launch.sh sweep --lambdas 0.25 0.5 1 --ks 1 2 4
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
case "${1:-}" in
  compare | sweep) sub="$1"; shift ;;
  *) sub=run ;;
esac
exec "$PYTHON" "$HERE/../paper/launch.py" "$sub" --task livecodebench "$@"
