#!/usr/bin/env bash
# Create a Cloud TPU pod slice through a queued resource (spot, reserved or on-demand).
#
#   launch/tpu/create.sh --name=hpa-v4-32 --accelerator-type=v4-32 [--zone=us-central2-b]
#       [--project=P] [--runtime-version=tpu-ubuntu2204-base] [--spot|--reserved] [--dry-run]
source "$(dirname "$0")/common.sh"

ACCEL="v4-8"
RUNTIME="tpu-ubuntu2204-base"
TIER=""
for arg in "$@"; do
  common_flag "$arg" && continue
  case "$arg" in
    --accelerator-type=*) ACCEL="${arg#*=}" ;;
    --runtime-version=*) RUNTIME="${arg#*=}" ;;
    --spot) TIER="--spot" ;;
    --reserved) TIER="--reserved" ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown flag $arg (see --help)" ;;
  esac
done
require_name

args=(gcloud compute tpus queued-resources create "$NAME-qr" --node-id="$NAME"
      --zone="$ZONE" --accelerator-type="$ACCEL" --runtime-version="$RUNTIME")
[ -n "$TIER" ] && args+=("$TIER")
[ -n "$PROJECT" ] && args+=("--project=$PROJECT")
run "${args[@]}"
echo "# wait until ACTIVE:"
run gcloud compute tpus queued-resources describe "$NAME-qr" --zone="$ZONE" \
  --format='value(state.state)' $(project_flag)
