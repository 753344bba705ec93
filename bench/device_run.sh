#!/usr/bin/env bash
# Issue 12's GPU checks as one prepared run, for a lent GPU machine (no registry there).
#
# Here, first:   ../shared/device/wheelhouse.sh          (fills .whl/, ~48 MB, git-excluded)
# There:         bash bench/device_run.sh                 (device `run`, carry [".whl"], timeout_s 560)
# Here, on CPU:  PY=.venv/bin/python SMOKE=1 OUT=/tmp/device-out bash bench/device_run.sh
#
# Each step writes its log under $OUT (what comes back) and has its own time cap, so a slow
# step costs its own figures, never the others'. Order: the cheap, always-useful figures first
# (the paper-scale training step, the batched evaluation), then bench/throughput.py, whose
# arms print one line each as they end. The numbers go to BENCHMARKS.md with the GPU named.
set -uo pipefail
OUT=${OUT:-/tmp/device-out}
PY=${PY:-python3}
WORK=${WORK:-/tmp/aam-device}
SMOKE=${SMOKE:-}
mkdir -p "$OUT" "$WORK"
if [ -d .whl ] && [ -z "$SMOKE" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/install.log" 2>&1 || { echo "wheel install failed: see install.log"; tail -5 "$OUT/install.log"; exit 3; }
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD/bench
  export PATH=/tmp/site/bin:$PATH
else
  export PYTHONPATH=$PWD/src:$PWD/bench
fi

step() {  # step NAME SECONDS COMMAND...: run with a cap, keep its log, print its last line
  local name=$1 cap=$2; shift 2
  local started=$SECONDS
  timeout "$cap" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - started)) s (cap $cap s)"
  tail -n 1 "$OUT/$name.log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU";
  "$PY" -c 'import torch, platform; print(platform.node(), "torch", torch.__version__, "cuda", torch.version.cuda,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")'; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

if [ -n "$SMOKE" ]; then
  scale=demo; throughput=(--smoke --trials 2 --stacks 1,2 --parallel 2)
  train=(--epochs 2 --batch-size 64); evalrows=(--random 300 100 --dim 64)
else
  scale=paper; throughput=(--trials 3 --stacks 1,2,4,8,16,32 --parallel 2)
  train=(--epochs 10 --batch-size 512); evalrows=(--random 3200 1000 --dim 768)
fi

# The random cache bench/throughput.py makes (and reuses), made here first for the step bench.
"$PY" - "$WORK/throughput/cache-$scale" "$scale" > "$OUT/cache.log" 2>&1 <<'EOF'
import sys
from pathlib import Path
from throughput import SCALES, random_cache
scale = SCALES[sys.argv[2]]
cache = random_cache(Path(sys.argv[1]), scale["videos"], scale["tokens"], scale["dim"], scale["actions"])
print(cache.path, cache.num_videos, cache.tokens, cache.dim)
EOF
tail -n 1 "$OUT/cache.log"

step train_step 60 "$PY" bench/train_step.py --cache "$WORK/throughput/cache-$scale" "${train[@]}"
step eval_cost 90 "$PY" bench/eval_cost.py --workdir "$WORK/eval" "${evalrows[@]}"
step throughput 330 "$PY" bench/throughput.py --workdir "$WORK/throughput" "${throughput[@]}"
grep -h '^(' "$OUT/throughput.log" || true
