#!/usr/bin/env bash
# Language-model comparison with scripts/train.py on one machine with 4 GPUs (measured on 4 x H200):
#  - LM comparison, same script and budget: H-LRU (m=2), BD-LRU (k=4), diagonal LRU (m=1), Llama, Mamba
#    (preset 10m, embedded tinyshakespeare, BPE 1024, seq 256, global batch 64, STEPS steps, bf16), one GPU each;
#  - multi-GPU: the H-LRU run again on 2 GPUs with accelerate launch, DDP and FSDP2 (same global batch),
#    to compare loss curves with the 1-GPU run and record throughput scaling.
# Writes $OUT/results.json (every run's metrics.json, log history included), $OUT/summary.txt, $OUT/logs.tar.gz;
# then `python -m benchmarks.lm_compare.report $OUT/results.json` makes the tables and the plot.
# Usage (repository root): OUT=/tmp/lm_out bash benchmarks/lm_compare/run_device.sh
#   PLAN=scaling: only Mamba and the 125m DDP scaling pair; ONLY="mamba llama": only those single-GPU runs.
#   WHEELS=folder: where datasets and mambapy are missing (an offline machine), install them from wheels there.
set -u
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast here
OUT=${OUT:-/tmp/lm_out}; W=/tmp/lm_runs; mkdir -p "$OUT" "$W"; rm -rf "$W"/*
STEPS=${STEPS:-300}; RUN_TIMEOUT=${RUN_TIMEOUT:-140}
# datasets (+ dill, multiprocess) and mambapy (the pure-PyTorch parallel scan that transformers' Mamba uses
# without the mamba-ssm CUDA kernels; without it Mamba runs a Python loop over time).
if ! python3 -c "import datasets, mambapy" 2>/dev/null && [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, accelerate, datasets, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__, 'triton', triton.__version__)"
  python3 -c "from hf_lrnn import ops; print('triton import error:', ops.TRITON_IMPORT_ERROR); print('triton unsupported (hlru 2, bdlru 4, hlru 1):', [ops.triton_unsupported_reason(k, s) for k, s in (('hlru', 2), ('bdlru', 4), ('hlru', 1))] if ops.TRITON_IMPORT_ERROR is None else '-')"
} > "$W/env.txt" 2>&1

COMMON="--preset 10m --seq-len 256 --batch-size 64 --max-steps $STEPS --lr 2e-3 --warmup-steps 40 --bf16
        --eval-interval 100 --eval-batches 0 --log-interval 10 --save-interval 100000 --max-time 90 --sample-tokens 60 ${EXTRA:-}"
run() {  # name gpus command...
  local name=$1 gpus=$2; shift 2
  local t0=$(date +%s)
  CUDA_VISIBLE_DEVICES=$gpus timeout "$RUN_TIMEOUT" "$@" --output-dir "$W/$name" > "$W/$name.log" 2>&1
  echo "$name rc=$? wall=$(( $(date +%s) - t0 ))s gpus=$gpus" >> "$W/status.txt"
}
TRAIN="python3 scripts/train.py $COMMON"
LAUNCH="accelerate launch --num_processes 2 --num_machines 1 --mixed_precision bf16 --dynamo_backend no --main_process_port"
FSDP="--use_fsdp --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_transformer_layer_cls_to_wrap LRNNDecoderLayer
      --fsdp_state_dict_type FULL_STATE_DICT --fsdp_reshard_after_forward true --fsdp_cpu_ram_efficient_loading false"
declare -A CMD=([hlru_m2]="$TRAIN --mixer hlru --order 2" [bdlru_k4]="$TRAIN --mixer bdlru --block-size 4"
  [lru_m1]="$TRAIN --mixer hlru --order 1" [llama]="$TRAIN --arch llama" [mamba]="$TRAIN --arch mamba"
  [hlru_m2_ddp2]="$LAUNCH 29501 --multi_gpu scripts/train.py $COMMON --mixer hlru --order 2"
  [hlru_m2_fsdp2]="$LAUNCH 29502 $FSDP scripts/train.py $COMMON --mixer hlru --order 2")
# Throughput scaling at a size where a step is not dominated by overheads (the 10m runs above are):
BIG="--preset 125m --seq-len 512 --max-steps 60 --eval-interval 60 --warmup-steps 10 --lr 1e-3"
CMD[hlru_125m]="$TRAIN $BIG"
CMD[hlru_125m_ddp2]="$LAUNCH 29503 --multi_gpu scripts/train.py $COMMON $BIG"
if [ "${PLAN:-}" = scaling ]; then  # the second call: Mamba (with mambapy) and the 125m scaling pair
  run mamba 3 ${CMD[mamba]} & run hlru_125m 0 ${CMD[hlru_125m]} & run hlru_125m_ddp2 1,2 ${CMD[hlru_125m_ddp2]} &
elif [ -n "${ONLY:-}" ]; then  # e.g. ONLY="mamba llama": those single-GPU runs, one GPU each, at once
  gpu=0; for name in $ONLY; do run "$name" $gpu ${CMD[$name]} & gpu=$((gpu + 1)); done
else
  ( run hlru_m2 0 ${CMD[hlru_m2]} & run llama 1 ${CMD[llama]} & wait
    run hlru_m2_ddp2 0,1 ${CMD[hlru_m2_ddp2]}; run hlru_m2_fsdp2 0,1 ${CMD[hlru_m2_fsdp2]} ) &
  ( run bdlru_k4 2 ${CMD[bdlru_k4]}; run lru_m1 2 ${CMD[lru_m1]} ) &
  ( run mamba 3 ${CMD[mamba]} ) &
fi
wait

python3 - "$W" "$OUT" <<'PY'
import json, sys, pathlib
w, out = map(pathlib.Path, sys.argv[1:])
results = {"env": (w / "env.txt").read_text(), "status": (w / "status.txt").read_text(), "runs": {}}
for m in sorted(w.glob("*/metrics.json")):
    results["runs"][m.parent.name] = json.loads(m.read_text())
(out / "results.json").write_text(json.dumps(results, indent=1))
lines = [results["env"], results["status"], f"{'run':15} {'params':>8} {'steps':>5} {'val loss':>8} {'ppl':>7} {'tok/s':>9} backend"]
for name, r in results["runs"].items():
    lines.append(f"{name:15} {r['parameters']/1e6:7.2f}M {r['steps']:5d} {r['eval_loss']:8.4f} {r['eval_perplexity']:7.2f} {r['train_tokens_per_second']:9.0f} {r.get('scan_backend')}")
(out / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
grep -h "backend='auto' uses the torch\|Error\|error" "$W"/*.log | sort | uniq -c | head -20
tar czf "$OUT/logs.tar.gz" -C "$W" $(cd "$W" && ls *.log env.txt status.txt)
