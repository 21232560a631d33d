#!/usr/bin/env bash
# Create a Cloud TPU pod slice through a queued resource (spot, reserved or on-demand): the
# request waits in the queue (WAITING_FOR_RESOURCES) until the capacity is there, then the TPU VM
# is made (ACTIVE). A spot slice can be taken back at any time; it is not made again by itself
# (see docs/tpu.md: delete.sh, create.sh, setup.sh, and run.sh resumes).
#
#   launch/tpu/create.sh --name=hpa-v4-32 --accelerator-type=v4-32 [--zone=us-central2-b]
#       [--project=P] [--runtime-version=tpu-ubuntu2204-base] [--spot|--reserved]
#       [--valid-until-duration=6h] [--wait] [--dry-run]
#
# --valid-until-duration: give up the request if it is not ACTIVE in that time (gcloud's flag).
# --wait: poll the queued resource (every HPA_TPU_POLL_SECONDS=30 s) until it is ACTIVE; exit 1
# if it becomes FAILED or SUSPENDED.
source "$(dirname "$0")/common.sh"

ACCEL="v4-8"
RUNTIME="tpu-ubuntu2204-base"
TIER=""
VALID=""
WAIT=0
for arg in "$@"; do
  common_flag "$arg" && continue
  case "$arg" in
    --accelerator-type=*) ACCEL="${arg#*=}" ;;
    --runtime-version=*) RUNTIME="${arg#*=}" ;;
    --spot) TIER="--spot" ;;
    --reserved) TIER="--reserved" ;;
    --valid-until-duration=*) VALID="$arg" ;;
    --wait) WAIT=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown flag $arg (see --help)" ;;
  esac
done
require_name

args=(gcloud compute tpus queued-resources create "$NAME-qr" --node-id="$NAME"
      --zone="$ZONE" --accelerator-type="$ACCEL" --runtime-version="$RUNTIME")
[ -n "$TIER" ] && args+=("$TIER")
[ -n "$VALID" ] && args+=("$VALID")
[ -n "$PROJECT" ] && args+=("--project=$PROJECT")
run "${args[@]}"
describe=(gcloud compute tpus queued-resources describe "$NAME-qr" --zone="$ZONE"
          "--format=value(state.state)")
[ -n "$PROJECT" ] && describe+=("--project=$PROJECT")
if [ "$WAIT" = 0 ]; then
  echo "# its state (ACTIVE: the TPU VM is ready for setup.sh):"
  show "${describe[@]}"
  exit 0
fi
echo "# every ${HPA_TPU_POLL_SECONDS:-30}s until ACTIVE (exit 1 on FAILED or SUSPENDED):"
show "${describe[@]}"
[ "$DRY_RUN" = 0 ] || exit 0
while :; do
  state=$("${describe[@]}" 2>/dev/null || echo UNKNOWN)
  case "$state" in
    ACTIVE) echo "$NAME-qr is ACTIVE"; exit 0 ;;
    FAILED|SUSPENDED) echo "error: $NAME-qr is $state" >&2; exit 1 ;;
  esac
  echo "$NAME-qr is ${state:-UNKNOWN}: waiting" >&2
  sleep "${HPA_TPU_POLL_SECONDS:-30}"
done
