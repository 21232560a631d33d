#!/usr/bin/env bash
# Run one command on every worker of a TPU VM at once (one `gcloud ... ssh --worker=all`), and
# split what comes back into one log per worker: logs/<name>/worker-N.log (all of it: all.log).
# Every worker runs the same command. No worker list is needed here or there: on a pod slice
# `hpa-jax` asks the VM's metadata server how many hosts the slice has and calls
# jax.distributed.initialize() with no arguments (set HPA_JAX_DISTRIBUTED=1/0 in the command to
# override). Each worker tags its lines with its number (metadata agent-worker-number).
#
#   launch/tpu/run.sh --name=hpa-v4-32 [--zone=Z] [--project=P] [--logdir=DIR] \
#       [--num-workers=N] [--dry-run] -- hpa-jax train --config configs/efficientnet.py \
#       --workdir gs://BUCKET/runs/b7
#
# --num-workers=N, if given, is checked: a warning names it when fewer workers logged anything.
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
[[ -z "$WORKERS" || "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "--num-workers=$WORKERS: give a count"
LOGDIR="${LOGDIR:-logs/$NAME}"

# Runs on each worker (bash): its number, then the command with every line tagged by it.
metadata="http://metadata.google.internal/computeMetadata/v1/instance/attributes"
worker='w=$(curl -sf -m 5 -H Metadata-Flavor:Google '"$metadata"'/agent-worker-number || hostname)'
command="$(printf '%q ' "$@")"
remote="set -o pipefail; $worker; { cd hpa-jax && source .venv/bin/activate && ${command% }; } \
2>&1 | sed -u \"s/^/[worker \$w] /\""

args=(gcloud compute tpus tpu-vm ssh "$NAME" --worker=all --zone="$ZONE")
[ -n "$PROJECT" ] && args+=("--project=$PROJECT")
args+=("--command=$remote")

# all.log -> worker-N.log: the lines each worker tagged "[worker N] ", without the tag.
split_logs() {
  rm -f "$1"/worker-*.log
  awk -v dir="$1" 'match($0, /^\[worker [^] ]+\] /) {
    print substr($0, RLENGTH + 1) > (dir "/worker-" substr($0, 9, RLENGTH - 10) ".log") }' \
    "$1/all.log"
}

echo "$(show "${args[@]}") 2>&1 | tee $LOGDIR/all.log"
if [ "$DRY_RUN" = 1 ]; then
  echo "# then one log per worker: $LOGDIR/worker-N.log"
  exit 0
fi
mkdir -p "$LOGDIR"
status=0
"${args[@]}" 2>&1 | tee "$LOGDIR/all.log" || status=$?
split_logs "$LOGDIR"
logged=$(find "$LOGDIR" -maxdepth 1 -name 'worker-*.log' | wc -l)
if [ -n "$WORKERS" ] && [ "$logged" -lt "$WORKERS" ]; then
  echo "warning: $logged of --num-workers=$WORKERS workers logged anything" >&2
fi
echo "logs in $LOGDIR: all.log and $logged worker logs (exit status $status)"
exit $status
