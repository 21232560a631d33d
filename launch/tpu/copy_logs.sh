#!/usr/bin/env bash
# Copy a run's logs (metrics.jsonl, TensorBoard events, plots, config, thresholds) to this
# machine: from a gs:// workdir with `gcloud storage rsync` (every file but the checkpoints; run
# it again to fetch only what changed), or from a folder on worker 0 of a TPU VM with scp.
#
#   launch/tpu/copy_logs.sh --remote-dir=gs://BUCKET/runs/b7 [--to=DIR] [--dry-run]
#   launch/tpu/copy_logs.sh --name=hpa-v4-32 --remote-dir=hpa-jax/runs/b7 [--to=DIR] [--dry-run]
#
# --to: default logs/<name> (scp) or logs/<the workdir's last folder> (gs://).
source "$(dirname "$0")/common.sh"

REMOTE=""
TO=""
for arg in "$@"; do
  common_flag "$arg" && continue
  case "$arg" in
    --remote-dir=*) REMOTE="${arg#*=}" ;;
    --to=*) TO="${arg#*=}" ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown flag $arg (see --help)" ;;
  esac
done
[ -n "$REMOTE" ] || die "--remote-dir=DIR is required"
if [[ "$REMOTE" == gs://* ]]; then
  REMOTE="${REMOTE%/}"
  TO="${TO:-logs/${REMOTE##*/}}"
  [ "$DRY_RUN" = 1 ] || mkdir -p "$TO"
  run gcloud storage rsync --recursive '--exclude=^checkpoints/' "$REMOTE" "$TO" $(project_flag)
  exit 0
fi
require_name
TO="${TO:-logs/$NAME}"
[ "$DRY_RUN" = 1 ] || mkdir -p "$TO"
run gcloud compute tpus tpu-vm scp --recurse "$NAME:$REMOTE" "$TO" --worker=0 --zone="$ZONE" \
  $(project_flag)
