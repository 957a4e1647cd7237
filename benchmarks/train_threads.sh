#!/bin/bash
# nmfseg train's compute threads beside its data workers on the CPU (#22; training/cores.py):
# 60 steps of the demo's recipe (Swin Factorizer at the demo's width, 48^3 patches, batch 2)
# on the demo's 40 phantoms at 3 mm, no validation, for each split of the cores below;
# seconds per step from log.csv over steps 20-60 (after start-up). Run it with nothing else
# on the machine. Usage: bash benchmarks/train_threads.sh [OUT]   (default bench_out/threads)
set -euo pipefail
OUT=${1:-bench_out/threads}
NMFSEG=${NMFSEG:-.venv/bin/nmfseg}
PY=${PY:-.venv/bin/python}
DATA=$OUT/data
[ -f "$DATA/dataset.json" ] || "$NMFSEG" synth brats -o "$DATA" --cases 40 --spacing 3 --seed 0 -j 2 --no-progress
run() {  # name, OMP_NUM_THREADS ("" = the policy's), workers
  rm -rf "$OUT/runs/$1"
  env ${2:+OMP_NUM_THREADS=$2} "$NMFSEG" train -m swin_factorizer_brats -d "$DATA" -f 0 \
    -o "$OUT/runs/$1" --device cpu -q --steps 60 --batch-size 2 --patch-size 48 --lr 4e-3 \
    --warmup-steps 30 --set optimizer.grad_clip=1.0 --val-every 1000 --log-every 10 \
    --checkpoint-every 1000 --workers "$3" --model-arg channels=16,32,64,128,256 \
    --model-arg window_size=4 --model-arg pos_embed_grid=3 --model-arg dropout=0.0 2>&1 \
    | grep "compute thread"
  "$PY" - "$OUT/runs/$1" <<'PY'
import csv, glob, sys
rows = list(csv.DictReader(open(glob.glob(f"{sys.argv[1]}/*/*/fold_0/log.csv")[0])))
t = {int(r["step"]): float(r["time"]) for r in rows if r.get("time")}
print(f"{sys.argv[1]}: {(t[60] - t[20]) / 40:.3f} s/step (steps 20-60)")
PY
}
CORES=$(nproc)
run threads_plus_0_workers "" 0
run threads_plus_2_workers "$CORES" 2
run threads_plus_1_worker "$CORES" 1
