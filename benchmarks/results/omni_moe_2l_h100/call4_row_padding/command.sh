#!/bin/bash
# H100, 2 layers: 8k rows padded to the step's longest (as before) and each alone (auto now), A B A.
T0=$(date +%s); LIMIT=${LIMIT:-330}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 tools/make_synthetic_data.py --out /tmp/synth_omni --samples 800 --seed 0 --shards 8 > /dev/null || exit 1
echo "data $(( $(date +%s) - T0 )) s"
ROWS8="data.seq_length=8192,data.max_tokens=8192,data.max_patches=16384,data.max_audio_frames=16384,data.global_batch_size=48,model.llm.max_seq_len=8192"
run() {  # NAME LAYERS VARIANT
  local s=$(date +%s)
  python3 benchmarks/omni_bench.py --config examples/configs/omni_moe.yaml --iters 7 --skip 3 --name "$1" --out $OUT \
     --work /tmp/work_$1 --variant "$3" model.llm.num_layers=$2 data.path=/tmp/synth_omni data.workers=4
  grep -h "model built in\|iter [0-9]/7" /tmp/work_$1/*/console.txt | cut -c1-230
  echo "== $1 took $(( $(date +%s) - s )) s (at $(( $(date +%s) - T0 )) s)"
}
left() { [ $(( $(date +%s) - T0 + $1 )) -lt $LIMIT ]; }
run rows8k_step_2l 2 "rows8k_step=$ROWS8,data.row_padding=step"
left 90 && run rows8k_2l 2 "rows8k=$ROWS8"
left 80 && run rows8k_step_again_2l 2 "rows8k_step_again=$ROWS8,data.row_padding=step"
mkdir -p $OUT/logs; for d in /tmp/work_*/*/; do n=$(basename $(dirname $d))_$(basename $d); cp $d/console.txt $OUT/logs/$n.txt 2>/dev/null; done
