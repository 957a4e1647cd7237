#!/usr/bin/env bash
# The GPU session's one script: the CUDA tests, then bench_cuda.py (#22), each under `timeout`.
#
# Run from the repository root on a machine with a CUDA GPU:
#
#     bash benchmarks/cuda_check.sh          # writes into $OUT, or bench_cuda_out/
#
# Sized for about 8 minutes on one H100 (at most 150 + 100 + 220 s, plus imports):
#   1. tests/test_cuda.py (CUDA against the CPU, bf16, torch.compile, the CLI pipeline), 150 s;
#   2. bench_cuda.py --no-compile: all three tables eager (float32, bf16), 7 rounds, 100 s;
#      the results are in even when the compiled run below is cut short;
#   3. bench_cuda.py, the inference and training tables in all four modes (torch.compile
#      included), 5 rounds, 220 s: compiling the Swin Factorizer (4 graphs) is most of it.
#      Its log keeps every table that finished if `timeout` stops it.
# Output: OUT/tests.log, OUT/eager/bench_cuda.{md,csv,log}, OUT/compiled/bench_cuda.{md,csv,log}.
# Exit status: the tests' when they failed, else the eager benchmark's (124: timed out); the
# compiled run's status is in the last line.
#
# Python: $PYTHON, else .venv/bin/python, else python3; src/ goes on PYTHONPATH, so nmfseg
# needs no install, but its dependencies (torch, monai, nibabel, nilearn, typer, ...) must be
# importable: a GPU image without monai/nibabel/nilearn needs their wheels carried in.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench_cuda_out}"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

preflight="import monai, nibabel, nmfseg.cli, torch
assert torch.cuda.is_available(), 'no CUDA device visible'"
if ! "$PY" -c "$preflight"; then
    echo "cuda_check: $PY cannot run nmfseg on a GPU here (see the error above)" >&2
    exit 3
fi
"$PY" -c "import torch; print('cuda_check:', torch.__version__, torch.cuda.get_device_name())"
mkdir -p "$OUT/eager" "$OUT/compiled"

timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/tests.log"
tests=$?
timeout 100 "$PY" benchmarks/bench_cuda.py --no-compile --repeats 7 --out "$OUT/eager" 2>&1 \
    | tee "$OUT/eager/bench_cuda.log"
eager=$?
timeout 220 "$PY" benchmarks/bench_cuda.py --tables inference,training --repeats 5 \
    --out "$OUT/compiled" 2>&1 | tee "$OUT/compiled/bench_cuda.log"
compiled=$?

echo "cuda_check: tests exit $tests, eager benchmark exit $eager, compiled benchmark exit" \
    "$compiled (124: timed out)"
if [ "$tests" -ne 0 ]; then exit "$tests"; fi
exit "$eager"
