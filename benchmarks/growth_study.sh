#!/usr/bin/env bash
# The growth study of issue 34 at the replica scale (configs/repro/replica.py: 16L x 512,
# 900 steps of 64 x 1024 tokens, 2.53e16 FLOPs), every arm at the scratch run's FLOPs:
#
#   bash benchmarks/growth_study.sh OUT_DIR SEEDS ARM...
#   e.g. bash benchmarks/growth_study.sh runs/study "0 1 2" scratch scratch_wsd late08 late06
#
# Arms: scratch (cosine, as before), scratch_wsd (warmup-stable-decay), stack (G_stack,
# 4L x 300 steps -> 16L, cosine), stack_wsd, late08 / late06 (one layer for 80% / 60% of
# the steps, expanded once by copy, WSD), late08_zero (expanded by zero layers),
# d<N> (G_stack at d = N small steps, the widened d grid: d150 d450 d675 d1012);
# scratch_mup_wsd, stack_mup_wsd, late08_mup: the same under μP (CompleteP, the small
# model's shape the base; configs/repro/replica.py mup=1).
# STACK_D sets the G_stack arms' d (small-stage steps; default 300).
# STUDY_ARGS (e.g. ",steps=20") is appended to every config's args and STUDY_FLAGS
# (e.g. "--config.train.global_batch_size=8") to every command: a toy-size run of every
# arm on CPU is  STUDY_ARGS=,steps=12 STUDY_FLAGS="..." bash benchmarks/growth_study.sh ...
# Each run's workdir is OUT_DIR/<arm>_s<seed>; `growjax speedup --scratch OUT_DIR/scratch_s0
# --grown OUT_DIR/late08_s0` then gives the FLOPs saved (docs/RESULTS.md).
set -u
OUT_DIR="$1"; SEEDS="$2"; shift 2
mkdir -p "$OUT_DIR"
D_ARG="${STACK_D:+,small_steps=$STACK_D}"   # G_stack's d (default the replica's 300)
for seed in $SEEDS; do
  for arm in "$@"; do
    case "$arm" in
      scratch) a="run=scratch" ;;
      scratch_wsd) a="run=scratch,schedule=wsd" ;;
      stack) a="run=stack$D_ARG" ;;
      stack_wsd) a="run=stack,schedule=wsd$D_ARG" ;;
      late08) a="run=late,fraction=0.8" ;;
      late06) a="run=late,fraction=0.6" ;;
      late08_zero) a="run=late,fraction=0.8,expand=zero" ;;
      scratch_mup_wsd) a="run=scratch,schedule=wsd,mup=1" ;;
      stack_mup_wsd) a="run=stack,schedule=wsd,mup=1$D_ARG" ;;
      late08_mup) a="run=late,fraction=0.8,mup=1" ;;
      d[0-9]*) a="run=stack,small_steps=${arm#d}" ;;
      *) echo "growth_study: unknown arm $arm"; exit 2 ;;
    esac
    W="$OUT_DIR/${arm}_s$seed"
    a="$a,seed=$seed${STUDY_ARGS:-}"
    echo "=== $arm: configs/repro/replica.py:$a ($(date +%T))"
    start=$SECONDS
    ${PYTHON:-python3} -m growjax train --config "configs/repro/replica.py:$a" --workdir "$W" \
      ${STUDY_FLAGS:-} > "$W.log" 2>&1
    echo "rc=$? in $((SECONDS - start)) s; $(grep -E "^ *step" "$W.log" | tail -1)"
    grep -E "eval" "$W.log" | tail -1
  done
done
