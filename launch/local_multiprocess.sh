#!/usr/bin/env bash
# Start N hpa-jax processes on this machine, each with D simulated CPU devices, joined by JAX's
# distributed runtime (what the multi-process tests do, and a rehearsal for a TPU pod).
# Each process gets HPA_JAX_COORDINATOR, HPA_JAX_NUM_PROCESSES and HPA_JAX_PROCESS_ID, which
# `hpa-jax train` passes to jax.distributed.initialize(); logs go to LOGDIR/process-I.log.
#
#   launch/local_multiprocess.sh --num-processes=2 --devices-per-process=2 [--port=12355] \
#       [--logdir=logs/local] [--dry-run] -- hpa-jax train --config configs/demo.py:runlocal \
#       --workdir runs/mp
set -euo pipefail

N=2
D=2
PORT=12355
LOGDIR="logs/local"
DRY_RUN=0
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
[ "$DRY_RUN" = 1 ] || mkdir -p "$LOGDIR"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup INT TERM

for ((i = 0; i < N; i++)); do
  envs=(JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$D"
        "HPA_JAX_COORDINATOR=localhost:$PORT" "HPA_JAX_NUM_PROCESSES=$N" "HPA_JAX_PROCESS_ID=$i")
  echo "+ env ${envs[*]} $* > $LOGDIR/process-$i.log 2>&1 &"
  if [ "$DRY_RUN" = 0 ]; then
    env "${envs[@]}" "$@" > "$LOGDIR/process-$i.log" 2>&1 &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ "$DRY_RUN" = 1 ] || echo "logs in $LOGDIR (exit status $status)"
exit $status
