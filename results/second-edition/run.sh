#!/usr/bin/env bash
# Tables 1-2, second edition (issue 42): every row at three seeds under the table protocol of commit
# ecb88b7 (log p(x) at S = 100 on 100 held-out sequences with the S = 1000 drift; E_k over changed
# pixels). One of two processes sharing one record store; start the other with another TAG and CORE:
#
#   bash results/second-edition/run.sh mnist A 0 &  bash results/second-edition/run.sh mnist B 1 reverse &
#
# `reverse` takes the groups last first, so the two processes meet in one group only (a record the
# other process holds is waited for at the end of its group, and a learning-rate grid point always is).
# Each (method, seed) record is claimed before it is trained (reporting.records.claim), so the two
# split the work; the learning-rate grids of the committed tables are reused (their protocol is
# unchanged), every record of another protocol is moved aside and made again. Runs from a worktree
# of the protocol's commit (TREE), so later commits do not change what is trained; records go to
# STORE/<table> (copy its runs/ and grid/ into results/second-edition/<table>/ as they land, and commit).
set -euo pipefail
table=$1 tag=$2 core=$3 order=${4:-forward}
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=groups.sh
. "$root/results/second-edition/groups.sh"
case $order in
  forward) ;;
  reverse) for ((i = 0, j = ${#groups[@]} - 1; i < j; i++, j--)); do t=${groups[i]} && groups[i]=${groups[j]} && groups[j]=$t; done ;;
  *) echo "run.sh: order '$order' is neither 'forward' nor 'reverse'" >&2 && exit 2 ;;
esac
commit=${COMMIT:-ecb88b7}
tree=${TREE:-/tmp/eqx_ffvae-$commit}
store=${STORE:-/tmp/second-edition}
git -C "$root" worktree prune  # a worktree registered by an earlier session whose /tmp is gone would block the add
[ -d "$tree" ] || git -C "$root" worktree add --detach "$tree" "$commit"
if [ ! -d "$store/$table" ]; then  # the first edition's grids and records, the landed second-edition records over them
  mkdir -p "$store" && cp -r "$root/results/$table" "$store/$table"
  landed=$root/results/second-edition/$table/runs
  if [ -d "$landed" ]; then
    for record in "$landed"/*/seed*; do
      rm -rf "$store/$table/runs/${record#"$landed"/}" && mkdir -p "$store/$table/runs/$(basename "$(dirname "$record")")"
      cp -r "$record" "$store/$table/runs/${record#"$landed"/}"
    done
  fi
fi
. "$root/.venv/bin/activate"
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" PYTHONPATH="$tree"
cd "$tree"
for group in "${groups[@]}"; do
  # shellcheck disable=SC2086  # the group is a list of methods
  nice -n 10 taskset -c "$core" python train/run.py compare --preset "$table-medium" --seeds 3 --models $group \
    --results "$store/$table" --out "$store/runs-$table-$tag"
done
