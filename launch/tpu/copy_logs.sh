#!/usr/bin/env bash
# Copy a run's files (metrics.jsonl, events, plots) from worker 0 of a TPU VM to this machine.
# Checkpoints on gs:// need no copy.
#
#   launch/tpu/copy_logs.sh --name=hpa-v4-32 --remote-dir=hpa-jax/runs/b7 [--to=DIR] [--dry-run]
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
require_name
[ -n "$REMOTE" ] || die "--remote-dir=DIR is required"
TO="${TO:-logs/$NAME}"
[ "$DRY_RUN" = 1 ] || mkdir -p "$TO"
run gcloud compute tpus tpu-vm scp --recurse "$NAME:$REMOTE" "$TO" --worker=0 --zone="$ZONE" \
  $(project_flag)
