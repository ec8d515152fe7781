#!/usr/bin/env bash
# Exit reliability of data-parallel training: run a 2-process `pyro-vae train --json` under
# torchrun RUNS times in a row (tiny settings: synthetic data, one epoch) and count the runs
# that do not exit 0 with one JSON report and every figure written.
#
# Usage (from the repository root):
#     bash bench/torchrun_exit_loop.sh [RUNS] [LOG_DIR]
# RUNS defaults to 50. The output of every failed run is kept in LOG_DIR (default: a new
# temporary folder); the last line is the summary, e.g. "50 runs: 50 ok, 0 failed".
set -u
RUNS=${1:-50}
LOG_DIR=${2:-$(mktemp -d -t torchrun_exit_loop.XXXXXX)}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$LOG_DIR"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg
ok=0
failed=0
for i in $(seq 1 "$RUNS"); do
    work=$(mktemp -d -t torchrun_exit_run.XXXXXX)
    python -m torch.distributed.run --standalone --nproc-per-node=2 -m pyro_vae.cli train \
        --data synthetic --epochs 1 --latent-dim 2 --hidden 16 --batch-size 64 --quiet --json \
        --out "$work/run" >"$work/stdout" 2>"$work/stderr"
    rc=$?
    reports=$(grep -c '^{' "$work/stdout")
    figures=$(ls "$work/run"/*.png 2>/dev/null | wc -l)
    if [ "$rc" -eq 0 ] && [ "$reports" -eq 1 ] && [ "$figures" -eq 3 ]; then
        ok=$((ok + 1))
        echo "run $i: ok"
    else
        failed=$((failed + 1))
        cp "$work/stdout" "$LOG_DIR/run$i.stdout"
        cp "$work/stderr" "$LOG_DIR/run$i.stderr"
        echo "run $i: FAILED (exit $rc, $reports report(s), $figures figure(s)); output in $LOG_DIR/run$i.*"
    fi
    rm -rf "$work"
done
echo "$RUNS runs: $ok ok, $failed failed"
[ "$failed" -eq 0 ]
