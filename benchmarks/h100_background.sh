#!/usr/bin/env bash
# Runs benchmarks/h100_table.sh in the background on the lent GPU machine, so a table
# longer than one call's limit (`all`: about 25 minutes) runs in one sitting across
# back-to-back calls on the same warm machine.
#
#   bash benchmarks/h100_background.sh start all        # returns at once
#   bash benchmarks/h100_background.sh follow 540       # prints new output for up to 540 s,
#                                                       # returns early when the table is done
#
# Output: /tmp/h100_background/log (the table's stdout) and the JSON under
# /tmp/h100_background/h100_table; `follow` copies both into $OUT when the table ends.
# Environment (GROWJAX_REMAT, GROWJAX_UNROLL, MAXTEXT_BATCHES, ...) is passed on.
set -u
DIR=/tmp/h100_background
case "${1:-}" in
  start)
    shift
    if [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then
      echo "h100_background: a table is already running (pid $(cat "$DIR/pid")) — follow it"
      exit 2
    fi
    mkdir -p "$DIR"
    : > "$DIR/log"; rm -f "$DIR/done" "$DIR/offset"
    # The table runs from its own copy of the tree: a later call that re-copies the
    # working tree (the device tool's carry) must not pull files from under it.
    rm -rf "$DIR/tree" && mkdir -p "$DIR/tree"
    for part in setup.py growjax configs benchmarks .peer; do
      [ -e "$part" ] && cp -r "$part" "$DIR/tree/"
    done
    (cd "$DIR/tree" && OUT="$DIR" PYTHONPATH="$DIR/tree${PYTHONPATH:+:$PYTHONPATH}" \
      setsid nohup bash -c "bash benchmarks/h100_table.sh $* >> '$DIR/log' 2>&1; \
      echo \"rc=\$?\" > '$DIR/done'" > /dev/null 2>&1 &
     echo $! > "$DIR/pid")
    echo "h100_background: started '$*' (pid $(cat "$DIR/pid")) in $DIR/tree, log $DIR/log" ;;
  follow)
    limit="${2:-540}"; t0=$(date +%s)
    [ -f "$DIR/log" ] || { echo "h100_background: nothing started — run start first"; exit 2; }
    while :; do
      off=$(cat "$DIR/offset" 2>/dev/null || echo 0)
      size=$(stat -c %s "$DIR/log")
      if [ "$size" -gt "$off" ]; then tail -c +"$((off + 1))" "$DIR/log" | head -c $((size - off)); echo "$size" > "$DIR/offset"; fi
      if [ -f "$DIR/done" ]; then
        echo "h100_background: table done ($(cat "$DIR/done"))"
        [ -n "${OUT:-}" ] && cp -r "$DIR/log" "$DIR"/h100_table "$OUT"/ 2>/dev/null
        exit 0
      fi
      [ $(( $(date +%s) - t0 )) -ge "$limit" ] && { echo "h100_background: still running — follow again"; exit 0; }
      sleep 5
    done ;;
  *) echo "usage: bash benchmarks/h100_background.sh start PART... | follow [SECONDS]"; exit 2 ;;
esac
