#!/usr/bin/env bash
# Delete the TPU VM and its queued resource (what create.sh made).
#
#   launch/tpu/delete.sh --name=hpa-v4-32 [--zone=Z] [--project=P] [--dry-run]
source "$(dirname "$0")/common.sh"

for arg in "$@"; do
  common_flag "$arg" && continue
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    *) die "unknown flag $arg (see --help)" ;;
  esac
done
require_name
run gcloud compute tpus queued-resources delete "$NAME-qr" --zone="$ZONE" --force --quiet \
  $(project_flag)
