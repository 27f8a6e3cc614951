#!/usr/bin/env bash
# Train on several nodes: run this once on every node, with the same MASTER_ADDR and NNODES and
# that node's NODE_RANK (0 .. NNODES-1). examples/train_slurm.sbatch does it under SLURM.
# Data parallelism is what remains: dp = NNODES * GPUS_PER_NODE / (TP * PP * CP).
# Keep TP within a node (it talks every layer); PP and DP cross nodes well.
set -euo pipefail
NNODES=${NNODES:?set NNODES, the number of nodes}
NODE_RANK=${NODE_RANK:?set NODE_RANK, the index of this node}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR, the address of node 0}
MASTER_PORT=${MASTER_PORT:-29500}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
TP=${TP:-8}; SP=${SP:-true}
PP=${PP:-4}; VPP=${VPP:-2}
SCHEDULE=${SCHEDULE:-megatron}  # megatron: encoders on stage 0; joint: every stage encodes a share, in its bubbles
CP=${CP:-1}; EP=${EP:-1}
DIST_OPT=${DIST_OPT:-true}
CONFIG=${CONFIG:?set CONFIG, a recipe YAML (see examples/configs)}
. "$(dirname "${BASH_SOURCE[0]}")/python.sh"  # PYTHON: .venv/bin/python where it exists
# On SIGTERM torchrun passes it on to the ranks, which save at the end of their step and exit 143;
# it kills them after this many seconds (its default, 30, can cut a large model's save short;
# torch releases before the variable wait a fixed 30 s).
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-110}

exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node-rank "$NODE_RANK" \
    --nproc-per-node "$GPUS_PER_NODE" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
    pretrain_omni.py --config "$CONFIG" \
    parallel.tp="$TP" parallel.sp="$SP" parallel.pp="$PP" parallel.vpp="$VPP" parallel.cp="$CP" \
    parallel.ep="$EP" parallel.distributed_optimizer="$DIST_OPT" pipeline.schedule="$SCHEDULE" "$@"
