#!/usr/bin/env bash
# Issue 7's GPU checks in one call of the device tool (a lent H100/H200 has ~15 minutes in all, at
# most 10 per command): the GPU tests, then the training and the eval benchmarks. Each part has its
# own timeout so one slow part cannot eat the others, and each writes its log under $OUT as it ends.
#
#   device run:  bash benchmarks/gpu_session.sh          (timeout_s 600; about 9 minutes at most)
#   here (CPU):  OUT=/tmp/gs SKIP_INSTALL=1 BENCH_ARGS=--tiny bash benchmarks/gpu_session.sh
#
# Copy the two benchmark reports (bench_*.txt) into benchmarks/RESULTS.md with the date and device.
set -u
OUT=${OUT:-/tmp/pgolf_gpu_session}
PY=${PYTHON:-python3}
BENCH_ARGS=${BENCH_ARGS:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true

part() {  # part NAME SECONDS CMD...: run with a timeout, log to $OUT/NAME.txt, say how it ended
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  echo "[$name] rc=$rc in $((SECONDS - t0))s (limit ${limit}s)" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.txt"
}

if [ -z "${SKIP_INSTALL:-}" ]; then
  # The device image has torch; the package itself installs without touching it.
  part install 120 "$PY" -m pip install -q --no-deps --no-build-isolation -e .
fi
part env 60 "$PY" -c "import torch, platform; print(platform.python_version(), torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA'); \
from pgolf.trainers import attention; print(attention.resolve('auto', torch.device('cuda' if torch.cuda.is_available() else 'cpu'), \
torch.bfloat16, 64).describe())"
part tests "${TESTS_LIMIT:-170}" "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py tests/test_compile_graphs.py \
  tests/test_attention.py tests/test_muon_batched.py tests/test_model_qat.py
part bench_train "${TRAIN_LIMIT:-170}" "$PY" benchmarks/gpu_bench.py --only train,muon --json "$OUT/bench_train.json" $BENCH_ARGS
part bench_eval "${EVAL_LIMIT:-170}" "$PY" benchmarks/gpu_bench.py --only sliding,ttt --json "$OUT/bench_eval.json" $BENCH_ARGS
cat "$OUT/summary.txt"
