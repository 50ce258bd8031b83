#!/bin/bash
# Where the usage cost came from: cf13210 (before lots), 96b5de0 (lots and holds, keys as text),
# the final commit (lots, hashed keys, review fixes); 2 rounds, order reversed.
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
OUT=/work/main/bench-results/2026-12-01-read-path/sitting3
mkdir -p $OUT
B=/work/main/target/release/token-ledger-bench
C="--scenario usage --accounts 10000 --concurrency 128 --duration-secs 10 --warmup-secs 2"
declare -A CMD
CMD[final]="$B $C --lots 3"
CMD[lots-96b5de0]="$B --server-bin /tmp/wtb/final/token-ledger-96b5de0 $C --lots 3"
CMD[prev-cf13210]="$B --server-bin /tmp/wtb/prevbin/token-ledger $C --lots 1"
ORDER=(final lots-96b5de0 prev-cf13210)
for r in 1 2; do
  if (( r % 2 == 1 )); then names=("${ORDER[@]}"); else names=(prev-cf13210 lots-96b5de0 final); fi
  for name in "${names[@]}"; do
    echo "=== round $r $name $(date +%T)"
    ${CMD[$name]} --json $OUT/round$r-$name.json 2>&1 | grep -E "^default"
  done
done
