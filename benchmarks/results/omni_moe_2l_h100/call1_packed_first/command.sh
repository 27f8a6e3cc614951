#!/bin/bash
# One device call: omni_moe, packed experts (HEAD) vs larger rows vs stacked experts (nopack copy).
T0=$(date +%s); LIMIT=${LIMIT:-560}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
MEM=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
L=4; [ "$MEM" -lt 100000 ] && L=2
echo "layers=$L"
python3 tools/make_synthetic_data.py --out /tmp/synth_omni --samples 800 --seed 0 --shards 8 > /dev/null || exit 1
echo "data $(( $(date +%s) - T0 )) s"
COMMON="model.llm.num_layers=$L data.path=/tmp/synth_omni data.workers=4"
ROWS16="data.seq_length=16384,data.max_tokens=16384,data.max_patches=32768,data.max_audio_frames=32768,data.global_batch_size=96,model.llm.max_seq_len=16384"
run() {  # NAME DIR VARIANT
  local s=$(date +%s)
  (cd $2 && PYTHONPATH=/tmp/site:$PWD python3 benchmarks/omni_bench.py --config examples/configs/omni_moe.yaml \
     --iters 7 --skip 3 --name "$1_${L}l" --out $OUT --work /tmp/work_$1 --variant "$3" $COMMON)
  for f in /tmp/work_$1/*/console.txt; do tail -4 $f; done
  D=$(( $(date +%s) - s )); echo "== $1 took $D s (at $(( $(date +%s) - T0 )) s)"
}
left() { [ $(( $(date +%s) - T0 + $1 )) -lt $LIMIT ]; }
run packed . "packed=train.fusion=auto"
FIRST=$D
left $(( FIRST * 13 / 10 )) && run rows16k . "rows16k=$ROWS16"
left $(( FIRST * 11 / 10 )) && run stacked .before/nopack "stacked=train.fusion=auto"
grep -h "model built in\|iteration  *[0-9]" /tmp/work_*/*/console.txt | tail -30
mkdir -p $OUT/logs; for d in /tmp/work_*/*/; do n=$(basename $(dirname $d))_$(basename $d); cp $d/console.txt $OUT/logs/$n.txt 2>/dev/null; done
