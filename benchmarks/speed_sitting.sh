#!/usr/bin/env bash
# MaxText parts (maxtext_1b maxtext_fp8 of h100_table.sh) ran in an earlier call of the
# same session on the same machine kind; rerun them with MAXTEXT=1.
# The GPU speed table of issue 33 in one sitting on one GPU: MaxText 0.2.5 bf16 and FP8
# (its own recipe, ../shared/peers/maxtext carried as .peer/), growjax's step benchmark
# bf16 and FP8 (delayed scaling, one-pass SwiGLU kernel) at 1.1B and 410M with every
# layer unrolled, the real `growjax train` command in bf16 and in FP8, and the
# pre-redesign commit's step benchmark (.peer/old, `git archive 98870e0`) as the
# regression baseline. Longer than one device call: start it detached, follow it.
#
#   bash benchmarks/speed_sitting.sh start      # copies the tree to /tmp/sitting, returns
#   bash benchmarks/speed_sitting.sh follow 560 # prints the log until done or 560 s
#
# Needs .peer (MaxText, ../shared/peers) and .whl (benchmarks/device_wheels.sh) carried.
# Raw outputs land in /tmp/sitting/out ($OUT/speed.tgz when done);
# benchmarks/speed_table.py turns them into benchmarks/speed_table.json.
set -u
D=/tmp/sitting
case "${1:-}" in
  start)
    rm -rf "$D" && mkdir -p "$D/tree" "$D/out"
    for p in setup.py growjax configs benchmarks .peer .whl; do cp -r "$p" "$D/tree/"; done
    (cd "$D/tree" && setsid nohup bash benchmarks/speed_sitting.sh run > "$D/log" 2>&1 &)
    echo "started" ;;
  follow)
    end=$((SECONDS + ${2:-560}))
    while [ ! -f "$D/done" ] && [ $SECONDS -lt $end ]; do sleep 5; done
    cat "$D/log"
    cp "$D/log" "$D/out/"; tar czf "$OUT/speed.tgz" -C "$D" out   # partial until done
    [ -f "$D/done" ] || echo "(still running)" ;;
  run)
    O="$D/out"
    trap 'touch "$D/done"' EXIT   # `follow` returns whatever way this ends
    export XLA_PYTHON_CLIENT_MEM_FRACTION=0.94 PYTHONUNBUFFERED=1
    SITE_DIR="$(bash benchmarks/device_deps.sh)"
    export PYTHONPATH="$SITE_DIR:$PWD"
    python3 -c "import growjax.train, growjax.growth.stages, ml_collections, grain, tensorflow_datasets; print('growjax imports')" \
      || { echo "growjax does not import here: carry the wheels of benchmarks/device_wheels.sh"; exit 3; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/device.txt"
    date -u +%FT%TZ > "$O/date.txt"
    study() {   # growth-study arms (issue 34), their logs and metrics kept under out/study
      [ -n "$1" ] || return 0
      bash benchmarks/growth_study.sh "$D/study" "${STUDY_SEEDS:-0}" $1
      mkdir -p "$O/study"
      (cd "$D/study" && find . \( -name "*.log" -o -name "metrics.jsonl" -o -name "*.json" \) \
        -not -path "*checkpoints*" | tar cf - -T - | tar xf - -C "$O/study")
    }
    study "${STUDY_ARMS:-}"
    B="python3 benchmarks/step_benchmark.py --steps 8 --warmup 2"
    [ -z "${TABLE_PARTS:-}" ] || OUT="$O" bash benchmarks/h100_table.sh $TABLE_PARTS
    for c in ${STEP_CASES:-bf16:1b:24 fp8_delayed:1b:24 bf16:410m:32}; do   # precision:size:batch
      IFS=: read -r prec size batch <<< "$c"
      echo "=== growjax step benchmark, $prec $size batch $batch, unrolled ($(date +%T))"
      $B --precision "$prec" --case "$size:$batch:dots:2048:0" --out "$O/step_${prec}_$size.json" \
        2>&1 | grep -E "^\| [0-9a-z]|FAILED|device|Error"
    done
    for prec in ${TRAIN_PRECISIONS:-bf16 fp8}; do
      echo "=== growjax train (the real command), 1.1B batch 24, unrolled, $prec ($(date +%T))"
      W="$D/train_$prec"
      python3 -m growjax train --config configs/llama.py:size=1b,batch=24 --workdir "$W" \
        --config.model.scan_unroll=0 --config.model.matmul_precision=$prec \
        --config.train.steps=40 --config.train.eval_every=0 --config.train.checkpoint_every=1000 \
        --config.train.log_every=10 > "$O/train_$prec.log" 2>&1
      grep -E "step +[0-9]+|tok/s|rror" "$O/train_$prec.log" | tail -5
    done
    study "${STUDY_ARMS_AFTER:-}"
    [ -n "${SKIP_OLD:-}" ] || { echo "=== regression baseline: 98870e0 step benchmark, bf16 1.1B unrolled ($(date +%T))"
    (cd .peer/old && PYTHONPATH="$SITE_DIR:$PWD" $B --case 1b:24:dots:2048:0 --out "$O/old_bf16.json" 2>&1 \
      | grep -E "^\| [0-9a-z]|FAILED|device"); }
    echo "=== done ($(date +%T))"; touch "$D/done" ;;
  *) echo "usage: speed_sitting.sh start|follow [seconds]|run"; exit 2 ;;
esac
