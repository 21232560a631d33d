#!/usr/bin/env bash
# Run one command on every worker of a TPU VM at once, one log per worker (logs/<name>/worker-N.log).
# jax.distributed.initialize() needs no arguments on a TPU pod: every worker runs the same command.
#
#   launch/tpu/run.sh --name=hpa-v4-32 --num-workers=4 [--zone=Z] [--project=P] [--dry-run] \
#       -- hpa-jax train --config configs/efficientnet.py --workdir gs://BUCKET/runs/b7
source "$(dirname "$0")/common.sh"

WORKERS=""
LOGDIR=""
while [ $# -gt 0 ]; do
  arg="$1"; shift
  common_flag "$arg" && continue
  case "$arg" in
    --num-workers=*) WORKERS="${arg#*=}" ;;
    --logdir=*) LOGDIR="${arg#*=}" ;;
    -h|--help) usage; exit 0 ;;
    --) break ;;
    *) die "unknown flag $arg (see --help)" ;;
  esac
done
require_name
[ $# -gt 0 ] || die "give the command to run after --"
if [ -z "$WORKERS" ]; then
  [ "$DRY_RUN" = 1 ] && die "--num-workers=N is required with --dry-run"
  WORKERS=$(gcloud compute tpus tpu-vm describe "$NAME" --zone="$ZONE" $(project_flag) \
    --format='value(networkEndpoints.len())')
fi
LOGDIR="${LOGDIR:-logs/$NAME}"
[ "$DRY_RUN" = 1 ] || mkdir -p "$LOGDIR"

remote="cd hpa-jax && source .venv/bin/activate && $(printf '%q ' "$@")"
pids=()
for ((w = 0; w < WORKERS; w++)); do
  echo "$(show gcloud compute tpus tpu-vm ssh "$NAME" --worker="$w" --zone="$ZONE" \
    $(project_flag) --command="$remote") > $LOGDIR/worker-$w.log 2>&1 &"
  if [ "$DRY_RUN" = 0 ]; then
    gcloud compute tpus tpu-vm ssh "$NAME" --worker="$w" --zone="$ZONE" $(project_flag) \
      --command="$remote" > "$LOGDIR/worker-$w.log" 2>&1 &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ "$DRY_RUN" = 1 ] || echo "logs in $LOGDIR (exit status $status)"
exit $status
