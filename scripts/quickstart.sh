#!/usr/bin/env bash
# Quick start 1: set up, then train and evaluate the default experiment end to end.
#   bash scripts/quickstart.sh [MODEL_DIR] [extra tapeline flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
model_dir=${1:-runs/digits_cnn}
shift || true
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
.venv/bin/tapeline --experiment=digits_cnn --model_dir="$model_dir" --alsologtostderr "$@"
echo "TensorBoard logs: $model_dir  (view: .venv/bin/tensorboard --logdir $model_dir)"
