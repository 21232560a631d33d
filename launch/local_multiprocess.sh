#!/usr/bin/env bash
# Start N hpa-jax processes on this machine, each with D simulated CPU devices, joined by JAX's
# distributed runtime (what the multi-process tests do, and a rehearsal for a TPU pod).
# Each process gets HPA_JAX_COORDINATOR, HPA_JAX_NUM_PROCESSES and HPA_JAX_PROCESS_ID, which
# `hpa-jax train` passes to jax.distributed.initialize(); logs go to LOGDIR/process-I.log and
# each process's pid to LOGDIR/process-I.pid (`kill -TERM $(cat LOGDIR/process-1.pid)` rehearses
# the preemption of one host: every process stops after the same step with a checkpoint).
#
#   launch/local_multiprocess.sh --num-processes=2 --devices-per-process=2 [--port=12355] \
#       [--logdir=logs/local] [--dry-run] -- hpa-jax train --config configs/demo.py:runlocal \
#       --workdir runs/mp
#
# SIGTERM or SIGINT to this script is passed on to every process (as a pod's preemption reaches
# every host), then it waits for all of them. Exit status: 0 if every process exited 0; 75 if
# each exited 0 or 75 (`hpa-jax train` preempted: run the same command again to resume); else
# the first other status, in process order.
set -euo pipefail

N=2
D=2
PORT=12355
LOGDIR="logs/local"
DRY_RUN=0
PREEMPTED_EXIT=75  # hpa_jax/train/preemption.py PREEMPTED_EXIT
usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }
while [ $# -gt 0 ]; do
  arg="$1"; shift
  case "$arg" in
    --num-processes=*) N="${arg#*=}" ;;
    --devices-per-process=*) D="${arg#*=}" ;;
    --port=*) PORT="${arg#*=}" ;;
    --logdir=*) LOGDIR="${arg#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) break ;;
    *) echo "error: unknown flag $arg (see --help)" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "error: give the command to run after --" >&2; exit 2; }
for value in "$N" "$D" "$PORT"; do
  [[ "$value" =~ ^[1-9][0-9]*$ ]] || { echo "error: $value is not a count (see --help)" >&2
                                       exit 2; }
done
[ "$DRY_RUN" = 1 ] || mkdir -p "$LOGDIR"

# Print a command as one copy-pasteable line (as launch/tpu/common.sh does).
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

pids=()
forward() {  # pass the signal on; the wait loop below then collects every exit status
  echo "local_multiprocess: $1: passing it on to ${#pids[@]} processes" >&2
  for pid in "${pids[@]}"; do kill -s "$1" "$pid" 2>/dev/null || true; done
}
trap 'forward TERM' TERM
trap 'forward INT' INT

# the caller's XLA flags are kept, all but the device count, which is this script's
xla_flags=""
for flag in ${XLA_FLAGS:-}; do
  case "$flag" in
    --xla_force_host_platform_device_count=*) ;;
    *) xla_flags+="$flag " ;;
  esac
done
xla_flags+="--xla_force_host_platform_device_count=$D"
for ((i = 0; i < N; i++)); do
  envs=(JAX_PLATFORMS=cpu "XLA_FLAGS=$xla_flags"
        "HPA_JAX_COORDINATOR=localhost:$PORT" "HPA_JAX_NUM_PROCESSES=$N" "HPA_JAX_PROCESS_ID=$i")
  line="+ env"
  for env in "${envs[@]}"; do line+=" $(quote "$env")"; done
  for arg in "$@"; do line+=" $(quote "$arg")"; done
  echo "$line > $LOGDIR/process-$i.log 2>&1 &"
  if [ "$DRY_RUN" = 0 ]; then
    env "${envs[@]}" "$@" > "$LOGDIR/process-$i.log" 2>&1 &
    pids+=($!)
    echo "$!" > "$LOGDIR/process-$i.pid"
  fi
done
[ "$DRY_RUN" = 0 ] || exit 0

# Each process's exit status. `wait` returns early (status > 128) when a trapped signal arrives:
# wait again while the process runs, and once more after (bash keeps the status of an ended
# child; 127: none kept, the first answer stands).
status=0
for ((i = 0; i < N; i++)); do
  while :; do
    code=0
    wait "${pids[$i]}" || code=$?
    kill -0 "${pids[$i]}" 2>/dev/null || break
  done
  if [ "$code" -gt 128 ]; then
    again=0
    wait "${pids[$i]}" || again=$?
    [ "$again" = 127 ] || code=$again
  fi
  echo "process $i exited $code"
  rm -f "$LOGDIR/process-$i.pid"
  if [ "$code" != 0 ] && { [ "$status" = 0 ] || [ "$status" = "$PREEMPTED_EXIT" ]; }; then
    status=$code
  fi
done
echo "logs in $LOGDIR (exit status $status)"
exit "$status"
