#!/usr/bin/env bash
# One-shot check of vramplan on a freshly rented GPU (docs/verify.md, "The one-shot check").
#
#   benchmarks/gpu_check.sh            # from a checkout, on a machine with one GPU
#   OUT=dir BUDGET=420 PYTHON=python3 benchmarks/gpu_check.sh
#
# Offline (bundled configs, HF_HUB_OFFLINE=1), with the torch already installed there. Every
# step is its own process under a hard time limit (coreutils `timeout`, then SIGKILL), so a hang
# or a crash costs one step, and each step starts with a fresh CUDA context. Steps that would
# start after BUDGET seconds are skipped, so the whole check stays under 8 minutes. Without
# torch or without a GPU it runs what can run (the probe's refusal, the CPU path, the tests) and
# says what it skipped. Everything lands in $OUT: one log per step, calibration.json,
# records.jsonl (verify --record) and summary.txt.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu_check_out/$(date -u +%Y%m%dT%H%M%SZ)}
BUDGET=${BUDGET:-420}
mkdir -p "$OUT"
RECORDS="$OUT/records.jsonl"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
SUMMARY=()
FAILED=0

SMALL=Qwen/Qwen2.5-0.5B
ONE_B=meta-llama/Llama-3.2-1B-Instruct
EIGHT_B=meta-llama/Llama-3.1-8B

say() { echo "$*" | tee -a "$OUT/summary.txt"; }

# step NAME LIMIT EXPECT [GREP] -- COMMAND...: run COMMAND under a hard LIMIT (s); it passes when
# its exit code is one of EXPECT (comma-separated) and its output contains GREP (if given).
step() {
  local name=$1 limit=$2 expect=$3 grep_for=""
  shift 3
  if [[ $1 != "--" ]]; then grep_for=$1; shift; fi
  shift
  local used=$(( $(date +%s) - START ))
  if (( used + limit > BUDGET + 60 )) && [[ $name != probe* ]]; then
    SUMMARY+=("$(printf '%-46s %-9s %6s  %s' "$name" SKIP "-" "time budget ($used s used of $BUDGET)")")
    return
  fi
  local log="$OUT/$(echo "$name" | tr ' /:' '___').log"
  local t0=$(date +%s%N)
  timeout -k 10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  local secs="$(( ms / 1000 )).$(( ms % 1000 / 100 ))"
  local status note
  if (( rc == 124 || rc == 137 )); then
    status=TIMEOUT; note="killed after $limit s"
  elif [[ ",$expect," == *",$rc,"* ]] && { [[ -z $grep_for ]] || grep -q -- "$grep_for" "$log"; }; then
    status=ok; note="exit $rc"
  else
    status=FAIL; note="exit $rc, expected $expect${grep_for:+ and '$grep_for'}"
  fi
  [[ $status != ok ]] && FAILED=$((FAILED + 1))
  local last=$(grep -v '^\s*$' "$log" | tail -1 | cut -c1-90)
  SUMMARY+=("$(printf '%-46s %-9s %6ss  %s | %s' "$name" "$status" "$secs" "$note" "$last")")
  echo "[$(( $(date +%s) - START ))s] $name: $status ($note)"
}
skip() { SUMMARY+=("$(printf '%-46s %-9s %6s  %s' "$1" SKIP "-" "$2")"); echo "$1: SKIP ($2)"; }

# ------------------------------------------------------------------ what this machine has
TORCH=$($PY -c "import torch; print(torch.__version__)" 2>/dev/null || true)
GPU=0; BNB=0
if [[ -n $TORCH ]]; then
  GPU=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
  $PY -c "import bitsandbytes" >/dev/null 2>&1 && BNB=1
fi
say "vramplan gpu_check $(date -u +%FT%TZ) on $(hostname)"
say "python $($PY -c 'import platform; print(platform.python_version())'), torch ${TORCH:-not installed}, CUDA GPU: $([[ $GPU == 1 ]] && echo yes || echo no), bitsandbytes: $([[ $BNB == 1 ]] && echo yes || echo no)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$OUT/summary.txt"
say ""

# ------------------------------------------------------------------ 1. probe
if [[ $GPU == 1 ]]; then
  step "probe" 30 0 -- $PY -m vramplan probe
  step "probe --json" 30 0 -- $PY -m vramplan probe --json
else   # no GPU: the probe must refuse in one sentence (exit 3), not crash
  step "probe (no GPU: expect exit 3)" 30 3 "vramplan: " -- $PY -m vramplan probe
fi

# ------------------------------------------------------------------ 2. calibration readings
if [[ $GPU == 1 ]]; then
  step "calibration readings" 60 0 -- $PY benchmarks/gpu_check.py readings
  cp "$OUT/calibration_readings.log" "$OUT/calibration.json" 2>/dev/null
else
  skip "calibration readings" "no CUDA GPU"
fi

# ------------------------------------------------------------------ 3. verify: 3 models x modes x levels
if [[ $GPU == 1 ]]; then
  MODES="infer lora"; [[ $BNB == 1 ]] && MODES="$MODES qlora"
  for model in $SMALL $ONE_B $EIGHT_B; do
    limit=60; [[ $model == "$ONE_B" ]] && limit=90; [[ $model == "$EIGHT_B" ]] && limit=150
    for mode in $MODES; do
      extra=""; [[ $mode != infer ]] && extra="--lora-r 16"
      step "verify $model $mode alloc" "$limit" 0,1 -- \
        $PY -m vramplan verify $model --mode $mode --batch 1 --ctx 1k $extra --level alloc --timeout $((limit - 15)) --record "$RECORDS"
      step "verify $model $mode run" "$limit" 0,1 -- \
        $PY -m vramplan verify $model --mode $mode --batch 1 --ctx 1k $extra --level run --timeout $((limit - 15)) --record "$RECORDS"
    done
  done
elif [[ -n $TORCH ]]; then   # the same pipeline on the CPU: the small model, and a tiny one that can run
  $PY -c "import json, sys; sys.path.insert(0, '.'); from tests.tiny import TINY_LLAMA; json.dump(TINY_LLAMA, open('$OUT/tiny.json', 'w'))"
  step "verify $SMALL infer alloc (cpu)" 120 0 -- \
    $PY -m vramplan verify $SMALL --device cpu --mode infer --batch 1 --ctx 1k --level alloc --record "$RECORDS"
  for mode in infer lora; do
    step "verify tiny llama $mode run (cpu)" 120 0 -- \
      $PY -m vramplan verify "$OUT/tiny.json" --device cpu --mode $mode --batch 2 --ctx 64 --level run --record "$RECORDS"
  done
  skip "verify on cuda:0 (3 models x modes x levels)" "no CUDA GPU"
else
  skip "verify (all)" "torch is not installed"
fi

# ------------------------------------------------------------------ 4. the gpu-marked tests
if [[ -n $TORCH ]]; then
  step "pytest -m gpu" 150 0,5 -- $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_verify.py
else
  skip "pytest -m gpu" "torch is not installed"
fi

# ------------------------------------------------------------------ 5. a forced OOM, 6. a real Ctrl-C
if [[ $GPU == 1 ]]; then
  step "forced OOM (8B, --force)" 120 1 "OOM" -- \
    $PY -m vramplan verify $EIGHT_B --mode infer --batch 64 --ctx 128k --level alloc --force --timeout 100
  step "real Ctrl-C (SIGINT while it holds memory)" 150 0 -- \
    $PY benchmarks/gpu_check.py ctrl-c -- $PY -m vramplan verify $EIGHT_B --mode infer --batch 1 --ctx 4k --level run
elif [[ -n $TORCH ]]; then
  step "forced OOM (cpu, --force)" 60 1 "OOM" -- \
    $PY -m vramplan verify "$OUT/tiny.json" --device cpu --mode infer --batch 1m --ctx 16m --level alloc --force
  step "real Ctrl-C (cpu)" 150 0 -- \
    $PY benchmarks/gpu_check.py ctrl-c 6 -- $PY -m vramplan verify $SMALL --device cpu --mode infer --batch 1 --ctx 4k --level run
else
  skip "forced OOM, real Ctrl-C" "torch is not installed"
fi

# ------------------------------------------------------------------ 7. summary
say ""
say "step                                           status       time  result"
for line in "${SUMMARY[@]}"; do say "$line"; done
say ""
if [[ -s $RECORDS ]]; then
  $PY -m vramplan calibrate "$RECORDS" 2>&1 | tee -a "$OUT/summary.txt"
else
  say "no verify records: nothing to calibrate"
fi
say ""
say "$FAILED step(s) failed; $(( $(date +%s) - START )) s; everything is in $OUT"
exit $(( FAILED > 0 ? 1 : 0 ))
