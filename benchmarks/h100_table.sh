#!/usr/bin/env bash
# growjax beside MaxText on one GPU, in one call: the table of benchmarks/RESULTS.md.
#
#   bash benchmarks/h100_table.sh [PART ...]     PART: maxtext steps train (default: all)
#
# - maxtext: MaxText 0.2.5, its own single-GPU recipe (../shared/peers/maxtext/run_gpu.sh,
#   carried as .peer/), TinyLlama-1.1B shape, batch $MAXTEXT_BATCHES (default 24).
# - steps:   benchmarks/step_benchmark.py: 1.1B bf16 / fp8, packed documents with and
#   without masking, 410M bf16 / fp8, the paper's 24L x 2048 grown shape.
# - train:   the real `growjax train` command at 1.1B (Shakespeare, byte tokens, seq
#   2048, batch 24, dots remat): tokens/s of its last report, to set beside the step
#   benchmark's (the two should agree within 3%).
# Every line of the tables names the device. MFU conventions: growjax/metrics.py.
set -u
PARTS="${*:-maxtext steps train}"
STEPS="${STEPS:-10}"
OUT_DIR="${OUT:-/tmp}/h100_table"
mkdir -p "$OUT_DIR"
B="python3 benchmarks/step_benchmark.py --steps $STEPS --warmup 2"

for part in $PARTS; do
  case "$part" in
    maxtext)
      echo "=== MaxText (batch ${MAXTEXT_BATCHES:-24})"
      (cd "$OUT_DIR" && BATCHES="${MAXTEXT_BATCHES:-24}" STEPS=20 bash "$OLDPWD/.peer/run_gpu.sh" 2>&1) \
        | grep -E "median|MFU|Tokens/s|TFLOP|RUN|rror" | tail -12 ;;
    steps)
      echo "=== growjax step benchmark"
      $B --case 1b:24:dots --case 410m:32:dots --case 24l_2048:16:dots 2>&1 | grep -E "^\||FAILED|device"
      $B --precision fp8 --case 1b:24:dots --case 410m:32:dots 2>&1 | grep -E "^\| [0-9a-z]|FAILED"
      $B --doc_len 600 --case 1b:24:dots 2>&1 | grep -E "^\| [0-9a-z]|FAILED"
      $B --doc_len 600 --no_masking --case 1b:24:dots 2>&1 | grep -E "^\| [0-9a-z]|FAILED" ;;
    train)
      echo "=== growjax train (the real command), 1.1B, batch 24, 40 steps"
      W="$OUT_DIR/train_1b"
      python3 -m growjax train --config configs/llama.py:size=1b,batch=24 --workdir "$W" \
        --config.data.seq_len=2048 --config.model.remat_policy=dots --config.train.steps=40 \
        --config.train.eval_every=0 --config.train.checkpoint_every=1000 \
        --config.train.log_every=10 2>&1 | grep -E "step +[0-9]+|tok/s|rror" | tail -4
      rm -rf "$W/checkpoints" ;;
  esac
done
