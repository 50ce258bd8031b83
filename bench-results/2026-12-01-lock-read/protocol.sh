#!/usr/bin/env bash
# Accounts locked without a row version (`ON CONFLICT DO UPDATE … WHERE false`) and read, with
# their lots and the price count, by one statement after the locks (`new`), against main before
# it (`main`, a4034df) and the commit before pricing (`before`, a14f340). Rounds alternate, the
# order reversed every other round.
set -euo pipefail
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
out=$(dirname "$0")/${SITTING:-sitting1}
rounds=${ROUNDS:-5}
mkdir -p "$out"
common=(--scenario usage --accounts 10000 --concurrency 128 --duration-secs 10 --warmup-secs 2)
run() { # name dir [flags]
  local name=$1 dir=$2; shift 2
  "$dir/token-ledger-bench" "${common[@]}" "$@" --server-bin "$dir/token-ledger" \
    --json "$out/$name.json" > "$out/$name.txt" 2>/dev/null
  printf '%-18s ' "$name"; grep -E "events/s" "$out/$name.txt" | awk '{print $2, "events/s p99", $13, "ms"}' | tr '\n' ' '
  grep -oE "storage [0-9]+ B/usage row|balances exact" "$out/$name.txt" | tr '\n' ' '; echo
}
for round in $(seq 1 "$rounds"); do
  order=(before main-priced new-priced new)
  if (( round % 2 == 0 )); then order=(new new-priced main-priced before); fi
  for what in "${order[@]}"; do
    case $what in
      before) run "before-$round" /tmp/prevbin ;;
      main-priced) run "main-priced-$round" /tmp/mainbin --priced ;;
      new-priced) run "new-priced-$round" /tmp/newbin --priced ;;
      new) run "new-$round" /tmp/newbin ;;
    esac
  done
done
