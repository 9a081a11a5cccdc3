#!/usr/bin/env bash
# Cloud TPU VM launcher for growjax: create a slice, ship the code to every
# worker, run `growjax train` on all of them, read logs, stop, delete.
#
# Every command it runs (gcloud, git) goes through `run`, which prints it as
# `+ CMD` first; with --dry-run it prints and runs nothing, so a plan can be
# reviewed, and tested, without credentials. It does not manage buckets, IAM,
# quotas or data: the workdir bucket must exist and the TPU VM's service
# account must be able to write to it.
set -euo pipefail

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "tpu_vm.sh: error: needs bash >= 4.4, this is ${BASH_VERSION} (macOS: brew install bash)" >&2
  exit 2
fi

readonly PROG=tpu_vm.sh
readonly SUBCOMMANDS="create|setup|train|logs|stop|delete|all"
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$LAUNCH_DIR")
readonly LAUNCH_DIR REPO_ROOT
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$LAUNCH_DIR/common.sh"
# Where the code lives on each worker, relative to the ssh user's home.
readonly REMOTE_DIR=growjax
# Matches the training process but not a shell whose command line holds this
# pattern (the brackets), so `stop` never kills its own ssh session.
readonly TRAIN_PATTERN='[g]rowjax train'

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh SUBCOMMAND [options] [-- growjax-train-args...]

Subcommands:
  create   create the TPU VM (or a queued resource with --queued, waiting until ACTIVE)
  setup    git-archive the repo, scp it to every worker, install it there with
           uv into ~/growjax/.venv: uv pip install -e '.[tpu]'
  train    run `growjax train --config C --workdir W [args after --]` on every worker;
           with --accelerator-type, after the compile pre-flight
  logs     show the end of the training log (worker 0 unless --worker)
  stop     stop training on every worker (SIGTERM, then SIGKILL after 30 s)
  delete   delete the TPU VM (or the queued resource and its node)
  all      pre-flight, create, setup, train, then delete, also when setup or train fails

Pre-flight (all; train given --accelerator-type): before any VM is created or used,
`growjax compile --config C --topology TYPE [--slices N] [--config.* args after --]`
runs on this machine (it needs `pip install -e '.[tpu]'` here, no TPU) and compiles
every step of the run with the TPU compiler; a run that would not fit in HBM is refused.

Options:
  --name NAME               TPU VM name (required)
  --zone ZONE               e.g. us-east5-a (required)
  --project PROJECT         GCP project (default: gcloud's configured project)
  --accelerator-type TYPE   e.g. v5p-32, v6e-8, v5litepod-16, v4-8 (create, all)
  --version RUNTIME         TPU software version (default: chosen from the type)
  --queued                  use a queued resource instead of a direct create
  --slices N                multi-slice: N slices of the type in one queued resource
                            (implies --queued; nodes NAME-0 .. NAME-<N-1>), data
                            parallel across slices
  --no-preflight            skip the `growjax compile` pre-flight
  --spot                    spot capacity (cheaper, can be preempted)
  --create-flag FLAG        extra flag for the create command, repeatable
                            (e.g. --create-flag=--reserved, --create-flag=--network=N)
  --config PATH[:ARG]       growjax config, relative to the repo root (train, all)
  --workdir gs://BUCKET/DIR checkpoints and logs; must be gs:// (train, all)
  --env K=V                 environment variable for training, repeatable
                            (e.g. LIBTPU_INIT_ARGS, TPU_STDERR_LOG_LEVEL)
  --ref REF                 git ref shipped by setup (default HEAD: commit first)
  --python VERSION          Python for the workers' virtualenv (default 3.11)
  --detach                  train in the background (nohup); read it with logs
  --worker W                worker for logs (default 0; `all` for every worker)
  --follow                  logs: keep following the log
  --dry-run                 print every command, one per line prefixed '+ ', run nothing
  -h, --help                this help

Example:
  launch/tpu_vm.sh all --name gj-v5p --zone us-east5-a --accelerator-type v5p-32 \
    --config configs/llama.py:size=1b --workdir gs://my-bucket/runs/1b -- --config.optimizer.peak_lr=3e-4
EOF
}

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

run() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(shquote "$@")"
    return 0
  fi
  printf '+ %s\n' "$(shquote "$@")" >&2
  "$@"
}

# Runtime images recommended for JAX per TPU generation
# (https://cloud.google.com/tpu/docs/runtimes).
default_version() {
  case $1 in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) die "no default --version for --accelerator-type=$1; pass --version RUNTIME (see: gcloud compute tpus tpu-vm versions list --zone $ZONE)" ;;
  esac
}

# ---------------------------------------------------------------- arguments

NAME="" ZONE="" PROJECT="" ACCEL="" VERSION="" CONFIG="" WORKDIR=""
REF=HEAD PYTHON=3.11 LOG_WORKER=0 SUBCMD=""
DRY_RUN=0 QUEUED=0 SPOT=0 DETACH=0 FOLLOW=0 SLICES=1 PREFLIGHT=1
ENVS=() CREATE_FLAGS=() TRAIN_ARGS=()

set_option() {
  local opt=$1 value=$2
  case $opt in
    --name) NAME=$value ;;
    --zone) ZONE=$value ;;
    --project) PROJECT=$value ;;
    --accelerator-type) ACCEL=$value ;;
    --version) VERSION=$value ;;
    --config) CONFIG=$value ;;
    --workdir) WORKDIR=$value ;;
    --ref) REF=$value ;;
    --python)
      [[ $value =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]] || die "--python expects a version such as 3.11, got '$value'"
      PYTHON=$value
      ;;
    --worker)
      [[ $value =~ ^(all|[0-9]+)$ ]] || die "--worker expects a worker index or 'all', got '$value'"
      LOG_WORKER=$value
      ;;
    --slices)
      [[ $value =~ ^[1-9][0-9]*$ ]] || die "--slices expects a positive integer, got '$value'"
      SLICES=$value
      ;;
    --create-flag) CREATE_FLAGS+=("$value") ;;
    --env)
      [[ $value =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] ||
        die "--env expects K=V with K a variable name, got '$value'"
      ENVS+=("$value")
      ;;
    *) die "unknown option '$opt' (see --help)" ;;
  esac
}

parse_args() {
  while (($#)); do
    case $1 in
      --)
        shift
        TRAIN_ARGS=("$@")
        return 0
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      --dry-run) DRY_RUN=1 ;;
      --queued) QUEUED=1 ;;
      --spot) SPOT=1 ;;
      --detach) DETACH=1 ;;
      --follow) FOLLOW=1 ;;
      --no-preflight) PREFLIGHT=0 ;;
      --*=*) set_option "${1%%=*}" "${1#*=}" ;;
      --create-flag)
        # Its value is itself a flag, so it cannot be told from a missing value.
        (($# >= 2)) || die "--create-flag needs a value"
        set_option "$1" "$2"
        shift
        ;;
      --*)
        if (($# < 2)) || [[ $2 == --* ]]; then
          die "$1 needs a value"
        fi
        set_option "$1" "$2"
        shift
        ;;
      *)
        [[ -z $SUBCMD ]] || die "unexpected argument '$1' after subcommand '$SUBCMD' (growjax train args go after --)"
        SUBCMD=$1
        ;;
    esac
    shift
  done
}

require() {
  local flag=$1 value=$2
  [[ -n $value ]] || die "'$SUBCMD' needs $flag"
}

validate() {
  [[ -n $SUBCMD ]] || die "no subcommand given; expected one of: ${SUBCOMMANDS//|/ }"
  [[ $SUBCMD =~ ^($SUBCOMMANDS)$ ]] ||
    die "unknown subcommand '$SUBCMD'; expected one of: ${SUBCOMMANDS//|/ }"
  require --name "$NAME"
  [[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "--name '$NAME' is not a valid TPU name: lowercase letters, digits and '-', starting with a letter"
  require --zone "$ZONE"
  if [[ $SUBCMD == create || $SUBCMD == all ]]; then
    require --accelerator-type "$ACCEL"
    [[ -n $VERSION ]] || VERSION=$(default_version "$ACCEL")
  fi
  if [[ $SUBCMD == train || $SUBCMD == all ]]; then
    require --config "$CONFIG"
    require --workdir "$WORKDIR"
    [[ $WORKDIR == gs://?* ]] ||
      die "--workdir '$WORKDIR' must be a gs:// path: every worker writes checkpoint shards there and the VMs' disks go with them"
  fi
  if [[ $SUBCMD == all ]] && ((DETACH)); then
    die "--detach cannot be used with 'all': it would delete the TPU while training runs"
  fi
  if ((SLICES > 1)); then
    QUEUED=1 # multi-slice capacity comes only as a queued resource
  fi
  if ((${#TRAIN_ARGS[@]})) && [[ $SUBCMD != train && $SUBCMD != all ]]; then
    die "arguments after -- are for growjax train; '$SUBCMD' takes none"
  fi
  return 0
}

# ---------------------------------------------------------------- gcloud

location_flags() {
  LOCATION=(--zone="$ZONE")
  if [[ -n $PROJECT ]]; then
    LOCATION+=(--project="$PROJECT")
  fi
}

# The TPU VM nodes: NAME, or NAME-0 .. NAME-<N-1> for N slices (the queued
# resource's --node-prefix).
nodes() {
  if ((SLICES > 1)); then
    local s
    for ((s = 0; s < SLICES; s++)); do
      echo "$NAME-$s"
    done
  else
    echo "$NAME"
  fi
}

# Runs a shell command on the workers (of every slice at once: a multi-slice
# job starts only when all of them have joined). gcloud hands it to the login
# shell, which is bash on the TPU VM images.
remote() {
  local worker=$1 command=$2 node pids=() pid rc=0
  if ((SLICES == 1 || DRY_RUN)); then
    for node in $(nodes); do
      run gcloud compute tpus tpu-vm ssh "$node" "${LOCATION[@]}" --worker="$worker" --command "$command"
    done
    return 0
  fi
  for node in $(nodes); do
    run gcloud compute tpus tpu-vm ssh "$node" "${LOCATION[@]}" --worker="$worker" --command "$command" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || rc=$?
  done
  return "$rc"
}

# The run compiled by the TPU compiler on this machine for the slice it will run on,
# before any VM is created or used: a run that does not fit is refused here.
preflight() {
  ((PREFLIGHT)) || return 0
  local overrides=() arg
  for arg in "${TRAIN_ARGS[@]}"; do
    if [[ $arg == --config.* ]]; then
      overrides+=("$arg")
    fi
  done
  if ! run growjax compile --config "$CONFIG" --topology "$ACCEL" --slices "$SLICES" "${overrides[@]}"; then
    die "pre-flight: growjax compile refused --config $CONFIG on $ACCEL (its line above); nothing was created or started — fix the config, or pass --no-preflight to launch anyway"
  fi
}

create_resource() {
  local extra=()
  if ((SPOT)); then
    extra+=(--spot)
  fi
  extra+=("${CREATE_FLAGS[@]}")
  if ((SLICES > 1)); then
    run gcloud compute tpus queued-resources create "$NAME" --node-count="$SLICES" --node-prefix="$NAME" \
      "${LOCATION[@]}" --accelerator-type="$ACCEL" --runtime-version="$VERSION" "${extra[@]}"
  elif ((QUEUED)); then
    run gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" "${LOCATION[@]}" \
      --accelerator-type="$ACCEL" --runtime-version="$VERSION" "${extra[@]}"
  else
    run gcloud compute tpus tpu-vm create "$NAME" "${LOCATION[@]}" \
      --accelerator-type="$ACCEL" --version="$VERSION" "${extra[@]}"
  fi
}

# A queued resource is accepted at once and provisioned later; the node only
# exists once the resource is ACTIVE. A direct create already blocks until ready.
wait_until_ready() {
  ((QUEUED)) || return 0
  local describe=(gcloud compute tpus queued-resources describe "$NAME" "${LOCATION[@]}" --format='value(state.state)')
  if ((DRY_RUN)); then
    run "${describe[@]}"
    return 0
  fi
  local state
  while true; do
    # A failed describe (network hiccup) must not end hours of queueing.
    state=$(run "${describe[@]}") || state="unknown (describe failed)"
    case $state in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDING | SUSPENDED) die "queued resource '$NAME' is $state; see: gcloud compute tpus queued-resources describe $NAME --zone $ZONE" ;;
    esac
    printf '%s: queued resource %s is %s; checking again in 30 s\n' "$PROG" "$NAME" "${state:-unknown}" >&2
    sleep 30
  done
}

cmd_create() {
  create_resource
  wait_until_ready
}

cmd_setup() {
  local tarball="${TMPDIR:-/tmp}/growjax-$NAME.tar.gz"
  if ((!DRY_RUN)) && [[ -n $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no) ]]; then
    printf '%s: warning: uncommitted changes are not shipped; setup sends %s\n' "$PROG" "$REF" >&2
  fi
  run git -C "$REPO_ROOT" archive --format=tar.gz --output="$tarball" "$REF"
  local node
  for node in $(nodes); do
    run gcloud compute tpus tpu-vm scp "$tarball" "$node:$REMOTE_DIR.tar.gz" "${LOCATION[@]}" --worker=all
  done
  if ((!DRY_RUN)); then
    rm -f "$tarball"
  fi
  # A fresh directory (and virtualenv) each time, so files deleted from the
  # repo are gone too; uv's wheel cache makes the reinstall quick. uv also
  # brings its own Python: the TPU images ship 3.10, growjax needs 3.11+.
  remote all "set -euo pipefail; rm -rf $REMOTE_DIR; mkdir $REMOTE_DIR; tar -xzf $REMOTE_DIR.tar.gz -C $REMOTE_DIR; rm $REMOTE_DIR.tar.gz; cd $REMOTE_DIR; python3 -m pip install --user --quiet uv; python3 -m uv venv --python $PYTHON .venv; python3 -m uv pip install --python .venv/bin/python -e \".[tpu]\""
}

cmd_train() {
  local train_cmd kv script
  if [[ -n $ACCEL ]]; then
    preflight
  fi
  train_cmd=$(shquote growjax train --config "$CONFIG" --workdir "$WORKDIR" "${TRAIN_ARGS[@]}")
  # shellcheck disable=SC2016  # $PWD and $PATH expand on the worker.
  # GROWJAX_DISTRIBUTED=1: every worker joins one JAX runtime (jax.distributed
  # reads the slice's workers from the TPU VM metadata).
  script='set -euo pipefail; cd '"$REMOTE_DIR"'; export PATH="$PWD/.venv/bin:$PATH" GROWJAX_DISTRIBUTED=1'
  for kv in "${ENVS[@]}"; do
    script+="; export $(shquote "$kv")"
  done
  if ((DETACH)); then
    # shellcheck disable=SC2016  # $! and $(hostname) expand on the worker.
    script+="; nohup $train_cmd > train.log 2>&1 < /dev/null & echo \"\$(hostname): started pid \$!\""
  else
    script+="; $train_cmd 2>&1 | tee train.log"
  fi
  remote all "$script"
}

cmd_logs() {
  local follow=""
  if ((FOLLOW)); then
    follow=" -F"
  fi
  remote "$LOG_WORKER" "tail -n 200$follow $REMOTE_DIR/train.log"
}

cmd_stop() {
  # SIGTERM first so the trainer can finish a checkpoint write; libtpu's lock
  # file outlives a killed process and would block the next run.
  remote all "pkill -TERM -f \"$TRAIN_PATTERN\" || true; for _ in \$(seq 30); do pgrep -f \"$TRAIN_PATTERN\" > /dev/null || break; sleep 1; done; pkill -KILL -f \"$TRAIN_PATTERN\" || true; rm -f /tmp/libtpu_lockfile"
}

cmd_delete() {
  if ((QUEUED)); then
    # --force deletes the queued resource's node with it.
    run gcloud compute tpus queued-resources delete "$NAME" "${LOCATION[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet
  fi
}

delete_on_exit() {
  local rc=$?
  trap - EXIT
  printf '%s: deleting %s (exit status so far: %d)\n' "$PROG" "$NAME" "$rc" >&2
  cmd_delete || printf '%s: delete failed; delete %s by hand or it keeps billing\n' "$PROG" "$NAME" >&2
  exit "$rc"
}

cmd_all() {
  preflight
  create_resource
  # Only once the create call succeeded: a failed create may mean the name
  # belongs to someone else's TPU, which must not be deleted.
  trap delete_on_exit EXIT
  # Exits through the EXIT trap on Ctrl-C or kill too.
  trap 'exit 130' INT
  trap 'exit 143' TERM
  wait_until_ready
  cmd_setup
  PREFLIGHT=0 # done before create
  cmd_train
}

main() {
  parse_args "$@"
  validate
  location_flags
  "cmd_$SUBCMD"
}

main "$@"
