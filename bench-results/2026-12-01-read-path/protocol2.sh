#!/bin/bash
# Second sitting, after "Lots written back as an insert and an update; a lone GetBalance runs at
# once": the figures sitting 1 found behind cf13210, again side by side; 3 rounds, order reversed
# every other round.
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
OUT=/work/main/bench-results/2026-12-01-read-path/sitting2
mkdir -p $OUT
B=/work/main/target/release/token-ledger-bench
PREV=/tmp/wtb/prevbin/token-ledger
C="--duration-secs 10 --warmup-secs 2"
declare -A CMD
CMD[balance64]="$B --scenario balance --accounts 10000 --concurrency 64 --lots 3 --echo $C"
CMD[balance64-prev]="$B --server-bin $PREV --scenario balance --accounts 10000 --concurrency 64 --lots 1 $C"
CMD[balance1]="$B --scenario balance --accounts 10000 --concurrency 1 --connections 1 --lots 3 $C"
CMD[balance1-prev]="$B --server-bin $PREV --scenario balance --accounts 10000 --concurrency 1 --connections 1 --lots 1 $C"
CMD[usage128]="$B --scenario usage --accounts 10000 --concurrency 128 --lots 3 --echo $C"
CMD[usage128-lots1]="$B --scenario usage --accounts 10000 --concurrency 128 --lots 1 $C"
CMD[usage128-prev]="$B --server-bin $PREV --scenario usage --accounts 10000 --concurrency 128 --lots 1 $C"
CMD[usage-open]="$B --scenario usage --accounts 10000 --concurrency 512 --lots 3 --rate 5500 $C"
CMD[usage-open-prev]="$B --server-bin $PREV --scenario usage --accounts 10000 --concurrency 512 --lots 1 --rate 5500 $C"
CMD[hold]="$B --scenario hold --accounts 10000 --concurrency 128 $C"
ORDER=(balance64 balance64-prev balance1 balance1-prev usage128 usage128-prev usage128-lots1 usage-open usage-open-prev hold)
for r in 1 2 3; do
  if (( r % 2 == 1 )); then names=("${ORDER[@]}"); else names=(); for ((i=${#ORDER[@]}-1; i>=0; i--)); do names+=("${ORDER[$i]}"); done; fi
  for name in "${names[@]}"; do
    cmd="${CMD[$name]}"
    echo "=== round $r $name $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "\$ $cmd" | sed "s#/work/main/target/release/##; s#/tmp/wtb/prevbin/#cf13210/#"
    $cmd --json $OUT/round$r-$name.json 2>&1 | grep -v "^server:" | grep -E "events/s|pairs/s|of echo|verif" | head -8
  done
done
