#!/usr/bin/env bash
# The runs of this folder as they were made: commit e738a77's quick preset (1,500 steps × batch 32,
# 300 held-out sequences, S = 20), seeds 0-2, supervised then weak. HEAD's quick preset scores fewer
# sequences with fewer samples, so the runs come from a worktree of that commit (TREE, default below),
# with this checkout's virtual environment; their outputs go to runs/issue18/ of this checkout.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tree=${TREE:-/tmp/eqx_ffvae-e738a77}
[ -d "$tree" ] || git -C "$root" worktree add --detach "$tree" e738a77
. "$root/.venv/bin/activate"
export PYTHONPATH="$tree"
mkdir -p "$root/runs/issue18"
for seed in 0 1 2; do
  for model in ffvae ffvae-weak; do
    out=$root/runs/issue18/$model-seed$seed
    [ -f "$out/eval.json" ] && continue
    start=$(date +%s.%N)
    rc=0
    (cd "$tree" && python train/run.py --model $model --seed $seed --out "$out") > "$out.log" 2>&1 || rc=$?
    end=$(date +%s.%N)
    echo "{\"model\": \"$model\", \"seed\": $seed, \"rc\": $rc, \"wall_s\": $(python -c "print($end-$start)")}" >> "$root/runs/issue18/walls.jsonl"
  done
done
