#!/usr/bin/env bash
# Make a table's second edition the table (issue 42), once every (method, seed) record has landed in
# results/second-edition/<table>/runs:
#
#   bash results/second-edition/finalize.sh mnist
#
# Refuses, naming the missing records, while any of the seventeen rows lacks a seed. Otherwise:
# results/<table>/runs and grid become the second edition's (the first edition stays in git history,
# at the commit results/<table>/README.md names), execution.json records that every record ran as a
# one-thread process beside another, `compare` at HEAD rewrites compare.json/md from the records
# (training nothing: a record that no longer matches the preset stops it, see below), `claims` rewrites
# claims.json/md and the README's summary, and verdicts.py writes verdicts.md. The folder's README
# prose is then yours to rewrite.
set -euo pipefail
table=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
src=$root/results/second-edition/$table
dst=$root/results/$table
# shellcheck source=groups.sh
. "$root/results/second-edition/groups.sh"
# shellcheck disable=SC2206  # each group is a list of methods
methods=(${groups[*]})
missing=()
for method in "${methods[@]}"; do
  for seed in 0 1 2; do
    [ -f "$src/runs/$method/seed$seed/eval.json" ] || missing+=("$method/seed$seed")
  done
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "finalize.sh: $table is not whole; missing ${#missing[@]} records: ${missing[*]}" >&2
  exit 1
fi
cd "$root"
rm -rf "$dst/runs" "$dst/grid"
cp -r "$src/runs" "$dst/runs"
cp -r "$src/grid" "$dst/grid"
python - "$dst" <<'EOF'
import json, sys
from pathlib import Path
dst = Path(sys.argv[1])
records = sorted(str(p.parent.relative_to(dst / "runs")) for p in (dst / "runs").glob("*/seed*/eval.json"))
records += sorted("grid/" + str(p.relative_to(dst / "grid")) for p in (dst / "grid").glob("*/lr*"))
setting = "one compare process per core, XLA_FLAGS='--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1', nice 10, two side by side"
(dst / "execution.json").write_text(json.dumps({"settings": {"one-thread": setting}, "records": dict.fromkeys(records, "one-thread")}, indent=1) + "\n")
EOF
out=runs/finalize-$table  # fresh, and relative, so that compare.json names its runs without this machine's paths
rm -rf "$out" && mkdir -p "$out"
# A record that does not match HEAD's preset would be moved aside and retrained: stop this compare (its
# own PID, nothing else) at the first such line.
: > "$out/compare.log"
python train/run.py compare --preset "$table-medium" --seeds 3 --models "${methods[@]}" --results "results/$table" --out "$out" \
  > "$out/compare.log" 2>&1 &
pid=$!
while kill -0 "$pid" 2> /dev/null; do
  if grep -q "made for another configuration" "$out/compare.log"; then
    kill "$pid"
    grep "made for another configuration" "$out/compare.log" >&2
    echo "finalize.sh: a record does not match HEAD's preset; stopped (log: $out/compare.log)" >&2
    exit 1
  fi
  sleep 2
done
wait "$pid"
grep -E "reused|wrote" "$out/compare.log"
python train/run.py claims --results "results/$table" --readme README.md  # relative: the README block names the folder
python results/second-edition/verdicts.py "$table"
