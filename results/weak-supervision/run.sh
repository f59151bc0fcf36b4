#!/usr/bin/env bash
# Done-when runs of the weak-supervision issue: quick preset, default steps, seeds 0-2, supervised then weak.
cd "$(dirname "$0")/../.." && . .venv/bin/activate
for seed in 0 1 2; do
  for model in ffvae ffvae-weak; do
    out=runs/issue18/$model-seed$seed
    [ -f $out/eval.json ] && continue
    start=$(date +%s.%N)
    python train/run.py --model $model --seed $seed --out $out > runs/issue18/$model-seed$seed.log 2>&1
    rc=$?
    end=$(date +%s.%N)
    echo "{\"model\": \"$model\", \"seed\": $seed, \"rc\": $rc, \"wall_s\": $(python -c "print($end-$start)")}" >> runs/issue18/walls.jsonl
  done
done
