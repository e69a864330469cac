#!/usr/bin/env bash
# The paper's toolalpaca runs: recipes/paper/toolalpaca.yaml with an algorithm and a model overlay.
#   recipes/toolalpaca/launch.sh --algo credit --model qwen3_8b [--seed 0] [--data DIR] [--dry-run] [-- hydra overrides]
#   recipes/toolalpaca/launch.sh compare --model olmo3_7b_instruct   # GRPO, SDPO and CREDIT side by side
#   recipes/toolalpaca/launch.sh sweep --lambdas 0.25 0.5 1 --ks 1 2 4
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
case "${1:-}" in
  compare | sweep) sub="$1"; shift ;;
  *) sub=run ;;
esac
exec "$PYTHON" "$HERE/../paper/launch.py" "$sub" --task toolalpaca "$@"
