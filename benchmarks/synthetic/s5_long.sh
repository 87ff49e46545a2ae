#!/usr/bin/env bash
# Longer S5 runs for BD-LRU (k = 4, 8; lr 5e-4 and 2e-3; seeds 0, 1): 8 runs, 2 per GPU on 4 GPUs.
# Usage (repository root, a machine with 4 GPUs): OUT=benchmarks/results MAX_TIME=150 bash benchmarks/synthetic/s5_long.sh
# Appends to $OUT/synthetic_s5_long.jsonl; the last lines of each run's log go to $OUT/synthetic_s5_long.log.
set -u
OUT=${OUT:-benchmarks/results}
MAX_TIME=${MAX_TIME:-150}
LOGS=$(mktemp -d)
run() {  # run GPU BLOCK LR SEED
  CUDA_VISIBLE_DEVICES=$1 PYTHONUNBUFFERED=1 python3 -m benchmarks.synthetic.run --task s5 --model bdlru \
    --block-size "$2" --lr "$3" --seed "$4" --steps 100000 --max-time "$MAX_TIME" \
    --out "$OUT/synthetic_s5_long.jsonl" > "$LOGS/s5_k$2_lr$3_s$4.log" 2>&1 &
}
run 0 4 5e-4 0; run 0 4 5e-4 1
run 1 8 5e-4 0; run 1 8 5e-4 1
run 2 4 2e-3 0; run 2 8 2e-3 0
run 3 4 2e-3 1; run 3 8 2e-3 1
wait
tail -n 5 "$LOGS"/s5_*.log > "$OUT/synthetic_s5_long.log"
cat "$OUT/synthetic_s5_long.jsonl"
