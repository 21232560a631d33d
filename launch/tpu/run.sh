#!/usr/bin/env bash
# Run one command on every worker of a TPU VM at once (one `gcloud ... ssh --worker=all`), and
# split what comes back into one log per worker: logs/<name>/worker-N.log (all of it: all.log).
# Every worker runs the same command. No worker list is needed here or there: on a pod slice
# `hpa-jax` asks the VM's metadata server how many hosts the slice has and calls
# jax.distributed.initialize() with no arguments (set HPA_JAX_DISTRIBUTED=1/0 in the command to
# override). Each worker tags its lines with its number (metadata agent-worker-number).
#
#   launch/tpu/run.sh --name=hpa-v4-32 [--zone=Z] [--project=P] [--logdir=DIR] \
#       [--num-workers=N] [--data=gs://BUCKET/data [--local-data=/tmp/hpa-data]] \
#       [--restart-on-preemption[=N]] [--dry-run] -- hpa-jax train \
#       --config configs/efficientnet.py --workdir gs://BUCKET/runs/b7 \
#       --config.data.dir=/tmp/hpa-data
#
# --num-workers=N, if given, is checked: a warning names it when fewer workers logged anything.
# --data=SRC: before the command, every worker runs `hpa-jax data stage SRC LOCAL` (LOCAL:
# --local-data, default /tmp/hpa-data): a checked copy of the dataset folder on its own disk,
# which after the first time costs one listing; the command runs only where that succeeded.
# --restart-on-preemption[=N] (N=3 if not given): when a worker's command exits 75 (`hpa-jax
# train` after SIGTERM: every host saved a checkpoint at the same step), or the ssh fails (255)
# while the TPU VM is not READY (it was preempted), wait until `gcloud ... describe` says READY
# again (every HPA_TPU_POLL_SECONDS=30 s, at most HPA_TPU_READY_TIMEOUT=3600 s), then run the
# same command again (it resumes from its workdir), up to N times. An ssh that fails while the
# VM is READY is not restarted: the job may still be running there. A spot VM that stays
# PREEMPTED must be recreated (delete.sh, create.sh) while this waits; a VM that was seen other
# than READY gets setup.sh again before the command (then --data is staged on it anew).
source "$(dirname "$0")/common.sh"

WORKERS=""
LOGDIR=""
DATA=""
LOCAL_DATA="/tmp/hpa-data"
RESTARTS=0
PREEMPTED_EXIT=75  # hpa_jax/train/preemption.py PREEMPTED_EXIT
while [ $# -gt 0 ]; do
  arg="$1"; shift
  common_flag "$arg" && continue
  case "$arg" in
    --num-workers=*) WORKERS="${arg#*=}" ;;
    --logdir=*) LOGDIR="${arg#*=}" ;;
    --data=*) DATA="${arg#*=}" ;;
    --local-data=*) LOCAL_DATA="${arg#*=}" ;;
    --restart-on-preemption) RESTARTS=3 ;;
    --restart-on-preemption=*) RESTARTS="${arg#*=}" ;;
    -h|--help) usage; exit 0 ;;
    --) break ;;
    *) die "unknown flag $arg (see --help)" ;;
  esac
done
require_name
[ $# -gt 0 ] || die "give the command to run after --"
[[ -z "$WORKERS" || "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "--num-workers=$WORKERS: give a count"
[[ "$RESTARTS" =~ ^[0-9]+$ ]] || die "--restart-on-preemption=$RESTARTS: give a count"
[ -n "$LOCAL_DATA" ] || die "--local-data= needs a folder"
LOGDIR="${LOGDIR:-logs/$NAME}"

# Runs on each worker (bash): its number, then the command with every line tagged by it.
metadata="http://metadata.google.internal/computeMetadata/v1/instance/attributes"
worker='w=$(curl -sf -m 5 -H Metadata-Flavor:Google '"$metadata"'/agent-worker-number || hostname)'
words() { local arg; for arg in "$@"; do quote "$arg"; printf ' '; done; }  # common.sh
command="$(words "$@")"
if [ -n "$DATA" ]; then
  command="$(words hpa-jax data stage --no-progress "$DATA" "$LOCAL_DATA")&& ${command% }"
fi
# The last line, "[exit-status worker N] S" (not in the worker logs), says how each one ended.
remote="set -o pipefail; $worker; { cd hpa-jax && source .venv/bin/activate && ${command% }; } \
2>&1 | sed -u \"s/^/[worker \$w] /\"; s=\$?; echo \"[exit-status worker \$w] \$s\"; exit \$s"

args=(gcloud compute tpus tpu-vm ssh "$NAME" --worker=all --zone="$ZONE")
[ -n "$PROJECT" ] && args+=("--project=$PROJECT")
args+=("--command=$remote")
describe=(gcloud compute tpus tpu-vm describe "$NAME" --zone="$ZONE")
[ -n "$PROJECT" ] && describe+=("--project=$PROJECT")
describe+=("--format=value(state)")

# all.log -> worker-N.log: the lines each worker tagged "[worker N] ", without the tag.
split_logs() {
  rm -f "$1"/worker-*.log
  awk -v dir="$1" 'match($0, /^\[worker [^] ]+\] /) {
    print substr($0, RLENGTH + 1) > (dir "/worker-" substr($0, 9, RLENGTH - 10) ".log") }' \
    "$1/all.log"
}

# Whether the attempt that exited with status $1 (its log: attempt.log) was preempted.
preempted() {
  local status=$1 state
  grep -q "^\[exit-status worker [^]]*\] $PREEMPTED_EXIT\$" "$LOGDIR/attempt.log" && return 0
  [ "$status" = 255 ] || return 1
  state=$("${describe[@]}" 2>/dev/null || echo UNKNOWN)
  echo "ssh failed (255); the TPU VM is ${state:-UNKNOWN}" >&2
  [ "$state" != READY ] && DOWN=1
}

# setup.sh again, with this script's flags, for a VM that was seen down (DOWN=1: it may be a
# new one)
DOWN=0
setup=(bash "$(dirname "$0")/setup.sh" "--name=$NAME" "--zone=$ZONE")
[ -n "$PROJECT" ] && setup+=("--project=$PROJECT")

wait_until_ready() {
  local waited=0 state
  while :; do
    state=$("${describe[@]}" 2>/dev/null || echo UNKNOWN)
    if [ "$state" = READY ]; then
      [ "$DOWN" = 0 ] || "${setup[@]}" || { echo "error: setup.sh failed" >&2; return 1; }
      DOWN=0
      return 0
    fi
    DOWN=1
    if [ "$waited" -ge "${HPA_TPU_READY_TIMEOUT:-3600}" ]; then
      echo "error: the TPU VM is still ${state:-UNKNOWN} after ${waited}s" >&2
      return 1
    fi
    echo "the TPU VM is ${state:-UNKNOWN}: waiting for READY (${waited}s)" >&2
    sleep "${HPA_TPU_POLL_SECONDS:-30}"
    waited=$((waited + ${HPA_TPU_POLL_SECONDS:-30}))
  done
}

echo "$(show "${args[@]}") 2>&1 | tee $LOGDIR/all.log"
if [ "$DRY_RUN" = 1 ]; then
  if [ "$RESTARTS" -gt 0 ]; then
    echo "# on exit status $PREEMPTED_EXIT (preempted), or ssh status 255 while the VM is not" \
      "READY: poll until READY, then the same command again (| tee -a), up to $RESTARTS times:"
    show "${describe[@]}"
    echo "# and if the VM was seen other than READY (down, or made anew), first:"
    show "${setup[@]}"
  fi
  echo "# then one log per worker: $LOGDIR/worker-N.log"
  exit 0
fi
mkdir -p "$LOGDIR"
: > "$LOGDIR/all.log"
attempt=0
while :; do
  status=0
  "${args[@]}" 2>&1 | tee "$LOGDIR/attempt.log" || status=$?
  cat "$LOGDIR/attempt.log" >> "$LOGDIR/all.log"
  [ "$status" != 0 ] && [ "$attempt" -lt "$RESTARTS" ] && preempted "$status" || break
  attempt=$((attempt + 1))
  echo "preempted (exit status $status): restart $attempt of $RESTARTS once the VM is READY" >&2
  wait_until_ready || break
  echo "$(show "${args[@]}") 2>&1 | tee -a $LOGDIR/all.log"
done
rm -f "$LOGDIR/attempt.log"
split_logs "$LOGDIR"
logged=$(find "$LOGDIR" -maxdepth 1 -name 'worker-*.log' | wc -l)
if [ -n "$WORKERS" ] && [ "$logged" -lt "$WORKERS" ]; then
  echo "warning: $logged of --num-workers=$WORKERS workers logged anything" >&2
fi
echo "logs in $LOGDIR: all.log and $logged worker logs (exit status $status)"
exit $status
