#!/usr/bin/env bash
# Train on the GPUs of one node with torchrun (gloo on the CPU when there is no GPU).
# Data parallelism is what remains of the ranks: dp = GPUS / (TP * PP * CP).
# Extra arguments are KEY=VALUE overrides, e.g. ./examples/train_one_node.sh train.bf16=true
set -euo pipefail
GPUS=${GPUS:-8}
TP=${TP:-2}            # tensor parallel (heads, FFN split); SP=true adds sequence parallelism
SP=${SP:-true}
PP=${PP:-2}            # pipeline stages; VPP virtual stages per rank (interleaved schedule)
VPP=${VPP:-1}
SCHEDULE=${SCHEDULE:-megatron}  # megatron: encoders on stage 0; joint: every stage encodes a share, in its bubbles
CP=${CP:-1}            # context parallel (sequence split in 2*CP balanced chunks)
EP=${EP:-1}            # expert parallel (MoE LLMs only)
DIST_OPT=${DIST_OPT:-true}  # shard optimizer state over data-parallel ranks
CONFIG=${CONFIG:-examples/configs/tiny_omni.yaml}
DATA=${DATA:-data/toy}
. "$(dirname "${BASH_SOURCE[0]}")/python.sh"  # PYTHON: .venv/bin/python where it exists
# On SIGTERM torchrun passes it on to the ranks, which save at the end of their step and exit 143;
# it kills them after this many seconds (its default, 30, can cut a large model's save short;
# torch releases before the variable wait a fixed 30 s).
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-110}

[ -f "$DATA/tokenizer.model" ] || "$PYTHON" tools/make_toy_data.py --out "$DATA"
exec "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" pretrain_omni.py \
    --config "$CONFIG" data.path="$DATA" \
    parallel.tp="$TP" parallel.sp="$SP" parallel.pp="$PP" parallel.vpp="$VPP" parallel.cp="$CP" \
    parallel.ep="$EP" parallel.distributed_optimizer="$DIST_OPT" pipeline.schedule="$SCHEDULE" "$@"
