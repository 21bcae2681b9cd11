#!/usr/bin/env bash
# Stage-1 training speed at the paper's sizes (random weights) on one GPU, every row in one process:
# ours with cached features at the large batch in one pass, with the speed switches (pure-bf16 frozen
# towers, channels_last, cudnn.benchmark), compiled, without the vision cache, and the official
# code's setting; images/s, first-step (compile) seconds, peak memory, model TFLOP/s and each row's
# loss against its reference, in one JSON (OUT/stage1_speed.json). Sized for a 6-minute device call:
# no row starts after BUDGET1 seconds. Optionally the stage-2 training benchmark (STAGE2=1, through
# the FSDP config, one process) and the teacher's captioning speed (TEACHER=1; its bf16 folder is
# 16.6 GB). No weights, no network (the models are built here at random). Summaries print last.
#   scripts/gpu_benchmarks.sh [OUT]
# Settings by environment: PRESET (paper; tiny for a CPU dry run), ROWS1 (cdefab), STEPS1 (10),
# BATCH1 (32), LARGE1 (128), BUDGET1 (300), STEPS2 (4), WORKERS (8), MODELS (folder for the built
# models), PARAMS1/PARAMS2 (stage params as JSON; default: python -m vlv.config with
# config/paper.yaml), TEACHER_IMAGES (80), TEACHER_BATCH (16).
set -uo pipefail
OUT=${1:-gpu_benchmarks}
mkdir -p "$OUT"
PRESET=${PRESET:-paper}
MODELS=${MODELS:-$(mktemp -d)/models}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
P1=${PARAMS1:-$($PY -m vlv.config stage1 --configfile config.yaml config/paper.yaml)}
P2=${PARAMS2:-$($PY -m vlv.config stage2 --configfile config.yaml config/paper.yaml)}
STAGE2=${STAGE2:-0}
TEACHER=${TEACHER:-0}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/environment.txt"
quiet() { grep -E --line-buffered "INFO saved|Error|error|Traceback|Killed" || true; }
t0=$(date +%s)
$PY -m vlv.bench.stage1 --params "$P1" --paper-sized "$PRESET" --models "$MODELS" --rows "${ROWS1:-cdefab}" \
  --batch-size "${BATCH1:-32}" --large-batch "${LARGE1:-128}" --steps "${STEPS1:-10}" --budget-s "${BUDGET1:-300}" \
  --out "$OUT/stage1_speed.json" >"$OUT/stage1.log" 2>&1
echo "stage 1 benchmark: exit $?, $(($(date +%s) - t0)) s" | tee -a "$OUT/environment.txt"
quiet <"$OUT/stage1.log"
if [ "$STAGE2" = 1 ]; then
  t0=$(date +%s)
  $PY -m vlv.bench.stage2_training --params "$P2" --paper-sized "$PRESET" --models "$MODELS" \
    --steps "${STEPS2:-4}" --micro-b "${MICRO2:-8}" --workers "${WORKERS:-8}" --fsdp config/accelerate/fsdp.yaml \
    --out "$OUT/stage2_train_speed.json" >"$OUT/stage2.log" 2>&1
  echo "stage 2 benchmark: exit $?, $(($(date +%s) - t0)) s" | tee -a "$OUT/environment.txt"
  quiet <"$OUT/stage2.log"
fi
if [ "$TEACHER" = 1 ]; then
  t0=$(date +%s)
  $PY -m vlv.bench.teacher --paper-sized "$PRESET" --models "$MODELS" --n-images "${TEACHER_IMAGES:-80}" \
    --batch-size "${TEACHER_BATCH:-16}" --out "$OUT/teacher_speed.json" >"$OUT/teacher.log" 2>&1
  echo "teacher benchmark: exit $?, $(($(date +%s) - t0)) s" | tee -a "$OUT/environment.txt"
fi
echo "== stage 1"
grep -A9 "^model FLOPs per training image" "$OUT/stage1.log" || tail -20 "$OUT/stage1.log"
if [ "$STAGE2" = 1 ]; then
  echo "== stage 2"
  grep -A6 "^model FLOPs per training sample" "$OUT/stage2.log" || tail -20 "$OUT/stage2.log"
fi
if [ "$TEACHER" = 1 ]; then
  echo "== teacher"
  grep -A1 "^teacher " "$OUT/teacher.log" || tail -20 "$OUT/teacher.log"
fi
