#!/usr/bin/env bash
# growjax beside MaxText and Hugging Face on one GPU, in one call: the tables of
# benchmarks/RESULTS.md.
#
#   bash benchmarks/h100_table.sh [PART ...]
#
# PARTs (default: maxtext_1b hf_1b steps_bf16 steps_fp8), in the order given:
# - maxtext_1b / maxtext_410m / maxtext_fp8: MaxText 0.2.5 with its own single-GPU recipe
#   (../shared/peers/maxtext/run_gpu.sh, carried as .peer/): TinyLlama-1.1B shape at batch
#   $MAXTEXT_BATCHES (24), the 410M shape at batch 32, and 1.1B with `quantization=fp8`.
# - hf_1b / hf_410m: transformers' LlamaForCausalLM + torch.compile (benchmarks/hf_peer.py),
#   batch 4 at 1.1B and 8 at 410M, compiled, no checkpointing (the peers README's recipe).
# - steps_bf16 / steps_fp8: benchmarks/step_benchmark.py, 1.1B batch 24 and 410M batch 32,
#   remat $GROWJAX_REMAT (default dots); steps_24l: the paper's 24L x 2048 grown shape at batch 24;
#   remat_ab: bf16 at both sizes under remat 'dots' and 'dots_attention' (which also keeps
#   the attention kernel's outputs), with the fused-attention calls counted in the HLO;
#   unrolled / unrolled_fp8 / unrolled_fp8_delayed: bf16 / fp8 (current scaling) / fp8 with
#   delayed scaling (amax histories, calibrated once before timing) at both sizes with every layer unrolled
#   (config.model.scan_unroll=0: no while loop left, MaxText's unrolled layers over growjax's
#   stacked parameters; the fastest path on the H100). tune_410m: the 410M unrolled at batch
#   40, under plain dots, and without remat at batch 24 (the 50% MFU target; not yet run).
# - train: the real `growjax train` command at 1.1B (Shakespeare, byte tokens, seq 2048,
#   batch 24, dots remat, document masking on as shipped): tokens/s of its last reports.
# - profile_bf16 / profile_fp8 / profile_fp8_delayed: benchmarks/profile_step.py at 1.1B batch 24: kernel time by
#   kind, the top kernels, and the 8 costliest XLA fusions as HLO (JSON under $OUT/h100_table).
#   GROWJAX_UNROLL=0 profiles (and `train` runs) with every layer unrolled.
# - ab_swiglu: delayed FP8 at 1.1B unrolled with fp8_swiglu_kernel off and auto (the Pallas
#   pass; also 410M), and bf16 at 1.1B beside them.
# - ab_cse: 1.1B unrolled, bf16 and fp8 delayed: config.model.remat_prevent_cse false / true,
#   and remat 'dots_attention_mlp_in'.
# - flags_1b: 1.1B unrolled, bf16 and fp8 delayed, under MaxText's XLA flags (triton GEMM
#   off, latency-hiding scheduler, command buffers off, no rematerialization pass).
# - loss_fp8_delayed: benchmarks/fp8_loss_curve.py --fp8_scaling delayed, 2,000 steps at
#   batch 16 (both runs at once, about 4 minutes); curves, plot and JSON under $OUT/h100_table.
# - attention: benchmarks/attention_kernels.py at the 1.1B (batch 24) and 410M (batch 32)
#   shapes: cuDNN, XLA, Pallas Triton and Pallas Mosaic GPU, forward and backward (not yet run).
# - maxtext / steps: the earlier sessions' part names (maxtext_1b; steps_bf16 steps_fp8 steps_24l).
# - table: the peers table without profiles, fastest paths (unrolled; fp8 current and
#   delayed; the real train command with GROWJAX_UNROLL), about 17 minutes: run it through
#   h100_background.sh.
# - all: the whole peers table of benchmarks/RESULTS.md in one run (about 25 minutes on an
#   H100): maxtext_1b maxtext_410m maxtext_fp8 hf_1b hf_410m steps_bf16 steps_fp8 unrolled unrolled_fp8 train
#   profile_bf16 profile_fp8. Longer than one device call: run it through
#   benchmarks/h100_background.sh (start all, then follow in back-to-back calls).
# Every part prints its device. MFU conventions: growjax/metrics.py. All JAX runs here use
# XLA_PYTHON_CLIENT_MEM_FRACTION=0.94 (MaxText's setting, and growjax's CLI default on GPU).
set -u
PARTS="${*:-maxtext_1b hf_1b steps_bf16 steps_fp8}"
PARTS="$(echo " $PARTS " | sed 's/ maxtext / maxtext_1b /; s/ steps / steps_bf16 steps_fp8 steps_24l /; s/ all / maxtext_1b maxtext_410m maxtext_fp8 hf_1b hf_410m steps_bf16 steps_fp8 unrolled unrolled_fp8 train profile_bf16 profile_fp8 /; s/ table / maxtext_1b unrolled unrolled_fp8_delayed maxtext_fp8 maxtext_410m hf_1b hf_410m train unrolled_fp8 /')"
STEPS="${STEPS:-8}"
OUT_DIR="${OUT:-/tmp}/h100_table"
mkdir -p "$OUT_DIR"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.94}"
B="python3 benchmarks/step_benchmark.py --steps $STEPS --warmup 2"
REMAT="${GROWJAX_REMAT:-dots}"   # not $REMAT: the MaxText runner reads that one
UNROLL="${GROWJAX_UNROLL:-1}"    # config.model.scan_unroll of the train and profile parts (0: all)
# The single-GPU XLA flags of MaxText's recipe (../shared/peers/maxtext/run_gpu.sh).
MAXTEXT_XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_triton_gemm=false \
--xla_gpu_enable_command_buffer= --xla_disable_hlo_passes=rematerialization"
M410="decoder_block=llama2 base_num_decoder_layers=24 base_emb_dim=1024 \
base_num_query_heads=16 base_num_kv_heads=16 head_dim=64 base_mlp_dim=2816 vocab_size=32000 \
max_target_length=2048 mlp_activations=[silu,linear] logits_via_embedding=false \
normalization_layer_epsilon=1e-5 rope_max_timescale=10000 enable_dropout=false"

maxtext() {  # $1 label, rest: env assignments
  local label="$1"; shift
  echo "=== MaxText $label  ($(date +%T))"
  (cd "$OUT_DIR" && env "$@" STEPS=20 bash "$OLDPWD/.peer/run_gpu.sh" 2>&1) \
    | grep -E "median|MFU|Tokens/s|TFLOP|RUN|rror|devices" | tail -8
}

for part in $PARTS; do
  case "$part" in
    maxtext_1b) maxtext "1.1B bf16" BATCHES="${MAXTEXT_BATCHES:-24}" ;;
    maxtext_410m) maxtext "410M bf16" BATCHES=32 MODEL_ARGS="$M410" ;;
    maxtext_fp8) maxtext "1.1B fp8" BATCHES="${MAXTEXT_BATCHES:-24}" EXTRA_ARGS="quantization=fp8" ;;
    hf_1b)
      echo "=== HF transformers 1.1B ($(date +%T))"
      python3 benchmarks/hf_peer.py --preset 1b --case 4:1:0 2>&1 | grep -E "^HF|rror" ;;
    hf_410m)
      echo "=== HF transformers 410M ($(date +%T))"
      python3 benchmarks/hf_peer.py --preset 410m --case 8:1:0 2>&1 | grep -E "^HF|rror" ;;
    steps_bf16)
      echo "=== growjax step benchmark, bf16 ($(date +%T))"
      $B --case 1b:24:$REMAT --case 410m:32:$REMAT --out "$OUT_DIR/steps_bf16.json" 2>&1 \
        | grep -E "^\| [0-9a-z]|FAILED|device|fused attention" ;;
    remat_ab)
      echo "=== growjax step benchmark, bf16, remat dots against dots_attention ($(date +%T))"
      $B --case 1b:24:dots --case 1b:24:dots_attention --case 410m:32:dots \
        --case 410m:32:dots_attention --out "$OUT_DIR/remat_ab.json" 2>&1 \
        | grep -E "^\| [0-9a-z]|FAILED|device|fused attention" ;;
    unrolled)
      echo "=== growjax step benchmark, bf16, layers unrolled ($(date +%T))"
      $B --case 1b:24:$REMAT:2048:0 --case 410m:32:$REMAT:2048:0 --out "$OUT_DIR/unrolled.json" \
        2>&1 | grep -E "^\| [0-9a-z]|FAILED|device|fused attention" ;;
    unrolled_fp8|unrolled_fp8_delayed)
      prec="${part#unrolled_}"
      echo "=== growjax step benchmark, $prec, layers unrolled ($(date +%T))"
      $B --precision "$prec" --case 1b:24:$REMAT:2048:0 --case 410m:32:$REMAT:2048:0 \
        --out "$OUT_DIR/$part.json" 2>&1 | grep -E "^\| [0-9a-z]|FAILED|device|fused attention" ;;
    flags_1b)
      echo "=== growjax step benchmark, 1.1B unrolled under MaxText's XLA flags ($(date +%T))"
      XLA_FLAGS="$MAXTEXT_XLA_FLAGS" $B --case 1b:24:$REMAT:2048:0 --out "$OUT_DIR/flags_bf16.json" \
        2>&1 | grep -E "^\| [0-9a-z]|FAILED|device"
      XLA_FLAGS="$MAXTEXT_XLA_FLAGS" $B --precision fp8_delayed --case 1b:24:$REMAT:2048:0 \
        --out "$OUT_DIR/flags_fp8_delayed.json" 2>&1 | grep -E "^\| [0-9a-z]|FAILED|device" ;;
    ab_swiglu)
      echo "=== growjax step benchmark, unrolled: delayed FP8's SwiGLU backward, two projections / one Pallas pass, and bf16 ($(date +%T))"
      $B --precision fp8_delayed --case 1b:24:$REMAT:2048:0 --set model.fp8_swiglu_kernel=off \
        --out "$OUT_DIR/swiglu_off.json" 2>&1 | grep -E "^\| [0-9a-z]|FAILED|device"
      $B --precision fp8_delayed --case 1b:24:$REMAT:2048:0 --case 410m:32:$REMAT:2048:0 \
        --out "$OUT_DIR/swiglu_pallas.json" 2>&1 | grep -E "^\| [0-9a-z]|FAILED|device"
      $B --case 1b:24:$REMAT:2048:0 --out "$OUT_DIR/swiglu_bf16.json" 2>&1 \
        | grep -E "^\| [0-9a-z]|FAILED|device" ;;
    ab_cse)
      echo "=== growjax step benchmark, 1.1B unrolled: remat_prevent_cse and the mlp_in policy ($(date +%T))"
      for prec in bf16 fp8_delayed; do
        for v in dots_attention:false dots_attention:true dots_attention_mlp_in:true; do
          $B --precision $prec --case 1b:24:${v%:*}:2048:0 --set model.remat_prevent_cse=${v#*:} \
            --out "$OUT_DIR/ab_${prec}_${v/:/_}.json" 2>&1 | grep -E "^\| [0-9a-z]|FAILED|device"
        done
      done ;;
    tune_410m)
      echo "=== growjax step benchmark, 410M unrolled: batch and remat toward 50% MFU ($(date +%T))"
      $B --case 410m:40:dots_attention:2048:0 --case 410m:32:dots:2048:0 \
        --case 410m:24:none:2048:0 --out "$OUT_DIR/tune_410m.json" 2>&1 \
        | grep -E "^\| [0-9a-z]|FAILED|device" ;;
    steps_fp8)
      echo "=== growjax step benchmark, fp8 ($(date +%T))"
      $B --precision fp8 --case 1b:24:$REMAT --case 410m:32:$REMAT --out "$OUT_DIR/steps_fp8.json" \
        2>&1 | grep -E "^\| [0-9a-z]|FAILED|device|fused attention" ;;
    steps_24l)
      echo "=== growjax step benchmark, 24L x 2048 ($(date +%T))"
      $B --case 24l_2048:24:dots --out "$OUT_DIR/steps_24l.json" 2>&1 | grep -E "^\| [0-9a-z]|FAILED|device" ;;
    train)
      echo "=== growjax train (the real command), 1.1B, batch 24, 40 steps ($(date +%T))"
      W="$OUT_DIR/train_1b"
      python3 -m growjax train --config configs/llama.py:size=1b,batch=24 --workdir "$W" \
        --config.data.seq_len=2048 --config.model.remat_policy=$REMAT --config.model.scan_unroll=$UNROLL --config.train.steps=40 \
        --config.model.matmul_precision=${TRAIN_PRECISION:-bf16} --config.model.fp8_scaling=${TRAIN_FP8_SCALING:-current} \
        --config.train.eval_every=0 --config.train.checkpoint_every=1000 \
        --config.train.log_every=10 2>&1 | grep -E "step +[0-9]+|tok/s|rror|cudnn|packing|fast" | tail -6
      rm -rf "$W/checkpoints" ;;
    loss_fp8_delayed)
      echo "=== FP8 delayed scaling against bf16, 12L x 768, 2,000 steps on real text ($(date +%T))"
      W="$OUT_DIR/fp8_delayed_curve"
      python3 benchmarks/fp8_loss_curve.py --workdir "$W" --steps 2000 --batch 16 \
        --fp8_scaling delayed 2>&1 | grep -vE "^(W|I)[0-9]{4}" | tail -30
      rm -rf "$W"/bf16/checkpoints "$W"/fp8/checkpoints ;;
    attention)
      echo "=== attention kernels, causal, forward and backward ($(date +%T))"
      python3 benchmarks/attention_kernels.py --shape 1b --batch 24 --json "$OUT_DIR/attention_1b.json" 2>&1 | grep -E "^\||^1b|rror" | grep -v "^|---"
      python3 benchmarks/attention_kernels.py --shape 410m --batch 32 --json "$OUT_DIR/attention_410m.json" 2>&1 | grep -E "^\||^410m|rror" | grep -v "^|---" ;;
    profile_bf16|profile_fp8|profile_fp8_delayed)
      prec="${part#profile_}"
      echo "=== profile 1.1B batch 24 $prec ($(date +%T))"
      python3 benchmarks/profile_step.py --case 1b:24:$REMAT:2048:$UNROLL --precision "$prec" \
        --top 25 --explain 8 --json "$OUT_DIR/profile_$prec.json" \
        --hlo_out "$OUT_DIR/hlo_${prec}${XLA_FLAGS:+_flags}.txt.gz" 2>&1 \
        | grep -vE "^(W|I)[0-9]{4}" | tail -70 ;;
    *) echo "unknown part $part" ;;
  esac
done
