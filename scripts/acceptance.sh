#!/usr/bin/env bash
# Every acceptance measurement of the closing notes, in one run, on the CPU (about 70 min on 2 cores).
#   scripts/acceptance.sh [OUT]        (default OUT=/tmp/acceptance; needs ../shared beside the repo)
# Each step writes OUT/<step>.log; the figures in the notes are read off those logs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/acceptance}
PY=${PY:-.venv/bin/python}
RL2=${RL2:-.venv/bin/rl2}
DATA=../shared/data
mkdir -p "$OUT"
step() { local name=$1; shift; echo "== $name: $*"; local t=$SECONDS; "$@" > "$OUT/$name.log" 2>&1 || echo "   (exit $?)"; echo "   $((SECONDS - t)) s"; }

# Issue 2: real data, both backbones; batch/worker invariance; core benchmark.
step pcam_default  $PY scripts/check_pcam.py --save-ref "$OUT/pcam_ref.rl2"
step occlusion     $PY scripts/measure_occlusion.py "$OUT/pcam_ref.rl2" $DATA/pcam_subset/val
step pcam_random   $PY scripts/check_pcam.py --backbone resnet18-random-TESTONLY
step invariance    $PY scripts/check_invariance.py "$OUT/pcam_ref.rl2" $DATA/pcam_subset/val
step bench_core    $PY benchmarks/bench_core.py --repeats 3

# Issue 3: sweeps on PCam and on CMU tiles, report screenshot.
step sweep_pcam    $RL2 sweep "$OUT/pcam_ref.rl2" $DATA/pcam_subset/val $DATA/pcam_subset/test -o "$OUT/sweep_pcam" --force -q
step cmu_tiles     $PY scripts/cmu_tiles.py $DATA/wsi/CMU-1-Small-Region.svs "$OUT/cmu_tiles"
step cmu_fit       $RL2 fit "$OUT/cmu_tiles/A" -o "$OUT/cmu_ref.rl2" --mpp 0.5 -q --force
step sweep_cmu     $RL2 sweep "$OUT/cmu_ref.rl2" "$OUT/cmu_tiles/B" -o "$OUT/sweep_cmu" --force -q
step screenshot    bash scripts/screenshot_report.sh "$OUT/sweep_pcam/report.html"
step scaler        $PY scripts/measure_scaler.py "$OUT/cmu_tiles"
# Cost against pytorch-fid: needs a separate venv with torchvision (see benchmarks/bench_vs_fid.py).
TVPY=${TVPY:-/tmp/tvvenv/bin/python}
if [ -x "$TVPY" ]; then step bench_vs_fid $TVPY benchmarks/bench_vs_fid.py --ref "$OUT/pcam_ref.rl2" --json "$OUT/bench_vs_fid.json"
else echo "== bench_vs_fid: skipped, no $TVPY"; fi

# Issue 4: QC of the CMU slide, AUC per damage kind, QC benchmark.
step qc_cmu        $RL2 qc $DATA/wsi/CMU-1-Small-Region.svs --ref "$OUT/pcam_ref.rl2" -o "$OUT/qc" --force -q --save-tiles all
step qc_auc        $PY scripts/qc_auc.py --ref "$OUT/pcam_ref.rl2" --fit-half --out "$OUT/qc_auc"
step bench_qc      $PY benchmarks/bench_qc.py --ref "$OUT/pcam_ref.rl2" --runs 3
echo "logs in $OUT"
