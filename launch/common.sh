# shellcheck shell=bash
# Helpers shared by the launchers in this folder; sourced, never run.
# Defines functions only: sourcing it changes no variable.

# Quote words for a POSIX shell, leaving plain words bare so the output reads
# like what one would type; the result re-parses to exactly the same words.
shquote() {
  local IFS=' ' word quoted=() escaped="'\\''"
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      quoted+=("$word")
    else
      quoted+=("'${word//\'/$escaped}'")
    fi
  done
  printf '%s' "${quoted[*]}"
}

# Environment for multi-process JAX training on NVIDIA GPUs (tuned for H100).
# A value set before launching wins, except NCCL_NVLS_ENABLE.
export_gpu_env() {
  # The latency-hiding scheduler overlaps collectives with compute; the
  # pipelined collectives let FSDP's per-layer all-gathers and reduce-scatters
  # in the scanned layer stack overlap with the neighbouring layer's compute.
  : "${XLA_FLAGS:=--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_pipelined_all_gather=true --xla_gpu_enable_pipelined_reduce_scatter=true --xla_gpu_enable_pipelined_all_reduce=true}"
  # JAX preallocates 75% of GPU memory by default; training wants more.
  : "${XLA_PYTHON_CLIENT_MEM_FRACTION:=0.90}"
  : "${NCCL_DEBUG:=WARN}"
  export XLA_FLAGS XLA_PYTHON_CLIENT_MEM_FRACTION NCCL_DEBUG
  # NVLink SHARP (CUDA multicast through the NVSwitches) stays off, and cannot
  # be turned on from here: it needs fabric-manager multicast support, takes
  # extra GPU memory per communicator, and when it fails it can leave a shared
  # node's GPUs unusable for everyone.
  export NCCL_NVLS_ENABLE=0
}

# Prints the variables that shape a launch as `+ export K=V` lines.
print_launch_env() {
  local name
  while read -r name; do
    printf '+ export %s\n' "$(shquote "$name=${!name}")"
  done < <(compgen -e | grep -E '^(XLA_|NCCL_|JAX_|TF_CPP_|CUDA_VISIBLE_DEVICES$)' | sort)
}
