#!/usr/bin/env bash
# Train the built-in tiny omni model on one GPU (on the CPU when there is none).
# Extra arguments are KEY=VALUE overrides, e.g. ./examples/train_tiny_single_gpu.sh train.bf16=true
set -euo pipefail
DATA=${DATA:-data/toy}
. "$(dirname "${BASH_SOURCE[0]}")/python.sh"  # PYTHON: .venv/bin/python where it exists

[ -f "$DATA/tokenizer.model" ] || "$PYTHON" tools/make_toy_data.py --out "$DATA"
exec "$PYTHON" pretrain_omni.py --config examples/configs/tiny_omni.yaml data.path="$DATA" "$@"
