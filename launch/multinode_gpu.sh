#!/usr/bin/env bash
# Multi-node GPU training of growjax without a scheduler: run this once on
# every node, one process per node driving all of its GPUs. Node 0 hosts the
# JAX coordinator, so HOST must be node 0's address, reachable from all nodes,
# and PORT free there.
#
#   node 0: launch/multinode_gpu.sh --coordinator 10.0.0.1:12345 --num-nodes 2 --node-rank 0 \
#             --config configs/llama.py:size=1b --workdir /shared/runs/x [-- --config.FIELD=VALUE ...]
#   node 1: the same with --node-rank 1
#
# It sets the XLA/NCCL environment of launch/common.sh and execs growjax train
# with explicit --coordinator_address/--num_processes/--process_id. It starts
# nothing on other nodes (use pdsh, ssh or your orchestrator for that); under
# SLURM use slurm_gpu.sbatch instead.
set -euo pipefail

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$LAUNCH_DIR/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/multinode_gpu.sh --coordinator HOST:PORT --num-nodes N --node-rank I
                               --config PATH[:ARG] --workdir DIR [--dry-run]
                               [-- growjax-train-args...]

  --coordinator HOST:PORT  node 0's address and a free port on it
  --num-nodes N            number of nodes, one process each
  --node-rank I            this node's index, 0..N-1 (0 hosts the coordinator)
  --config PATH[:ARG]      growjax config
  --workdir DIR            checkpoints; every node must see the same DIR (shared fs or gs://)
  --dry-run                print the environment and the command, run nothing
EOF
}

die() {
  printf 'multinode_gpu.sh: error: %s\n' "$*" >&2
  exit 2
}

COORDINATOR="" NUM_NODES="" NODE_RANK="" CONFIG="" WORKDIR="" DRY_RUN=0
TRAIN_ARGS=()
while (($#)); do
  case $1 in
    --)
      shift
      TRAIN_ARGS=("$@")
      break
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    --dry-run) DRY_RUN=1 ;;
    --coordinator | --num-nodes | --node-rank | --config | --workdir)
      if (($# < 2)) || [[ $2 == --* ]]; then
        die "$1 needs a value"
      fi
      case $1 in
        --coordinator) COORDINATOR=$2 ;;
        --num-nodes) NUM_NODES=$2 ;;
        --node-rank) NODE_RANK=$2 ;;
        --config) CONFIG=$2 ;;
        --workdir) WORKDIR=$2 ;;
      esac
      shift
      ;;
    *) die "unknown argument '$1' (see --help; growjax train args go after --)" ;;
  esac
  shift
done

[[ $COORDINATOR =~ ^[^:[:space:]]+:[0-9]+$ ]] ||
  die "--coordinator must be HOST:PORT (node 0's address), got '$COORDINATOR'"
[[ $NUM_NODES =~ ^[1-9][0-9]*$ ]] || die "--num-nodes must be a positive integer, got '$NUM_NODES'"
if ! [[ $NODE_RANK =~ ^[0-9]+$ ]] || ((NODE_RANK >= NUM_NODES)); then
  die "--node-rank must be in 0..$((NUM_NODES - 1)), got '$NODE_RANK'"
fi
[[ -n $CONFIG ]] || die "--config is required"
[[ -n $WORKDIR ]] || die "--workdir is required"

export_gpu_env
CMD=(growjax train --config "$CONFIG" --workdir "$WORKDIR"
  --coordinator_address "$COORDINATOR" --num_processes "$NUM_NODES" --process_id "$NODE_RANK"
  "${TRAIN_ARGS[@]}")

if ((DRY_RUN)); then
  print_launch_env
  printf '+ %s\n' "$(shquote "${CMD[@]}")"
  exit 0
fi
printf '+ %s\n' "$(shquote "${CMD[@]}")" >&2
exec "${CMD[@]}"
