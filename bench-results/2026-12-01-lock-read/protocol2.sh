#!/usr/bin/env bash
# One load generator ($BENCH, which also prints the machine's CPU per event) drives every
# server: the commit before pricing (`before`, a14f340, caller-priced: it has no prices), main
# before this session (`main`, a4034df), the lock-and-read change (`lock`), and the lock-and-read
# change with the acquire ping skipped under load (`ping`), that with the batch's last writes as
# one statement (`join`), that with lot burns kept HOT by migration 0017 (`hot`), and that with
# room for HOT account updates too (`hot2`, 0017 as committed); all but
# `before` ledger-priced (`*-caller`: the same binary caller-priced). NAMES picks the servers,
# ROUNDS the rounds, SITTING the output folder. Rounds alternate, the order reversed every other
# round.
set -euo pipefail
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
out=$(dirname "$0")/${SITTING:-sitting2}
rounds=${ROUNDS:-4}
BENCH=${BENCH:-/tmp/pingbin/token-ledger-bench}
mkdir -p "$out"
common=(--scenario usage --accounts 10000 --concurrency 128 --duration-secs 10 --warmup-secs 2)
run() { # name server-dir [flags]
  local name=$1 dir=$2; shift 2
  "$BENCH" "${common[@]}" "$@" --server-bin "$dir/token-ledger" \
    --json "$out/$name.json" > "$out/$name.txt" 2>/dev/null
  printf '%-16s ' "$name"; grep -E "events/s" "$out/$name.txt" | awk '{printf "%s events/s p99 %s ms ", $2, $13}'
  grep -oE "storage [0-9]+ B/usage row|machine CPU [0-9]+% busy, [0-9.]+ µs/event|balances exact" "$out/$name.txt" | tr '\n' ' '; echo
}
names=(${NAMES:-before main lock ping})
for round in $(seq 1 "$rounds"); do
  order=("${names[@]}")
  if (( round % 2 == 0 )); then order=($(printf '%s\n' "${names[@]}" | tac)); fi
  for what in "${order[@]}"; do
    case $what in
      before) run "before-$round" /tmp/prevbin ;;
      main) run "main-$round" /tmp/mainbin --priced ;;
      lock) run "lock-$round" /tmp/newbin --priced ;;
      ping) run "ping-$round" /tmp/pingbin --priced ;;
      join) run "join-$round" /tmp/joinbin --priced ;;
      join-caller) run "join-caller-$round" /tmp/joinbin ;;
      hot) run "hot-$round" /tmp/hotbin --priced ;;
      hot-caller) run "hot-caller-$round" /tmp/hotbin ;;
      hot2) run "hot2-$round" /tmp/hot2bin --priced ;;
      hot2-caller) run "hot2-caller-$round" /tmp/hot2bin ;;
    esac
  done
done
