#!/usr/bin/env bash
# Install hpa-jax on every worker of a TPU VM: copy this checkout as a tarball, then pip install
# it with the TPU build of jaxlib.
#
#   launch/tpu/setup.sh --name=hpa-v4-32 [--zone=Z] [--project=P] [--dry-run]
source "$(dirname "$0")/common.sh"

for arg in "$@"; do
  common_flag "$arg" && continue
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    *) die "unknown flag $arg (see --help)" ;;
  esac
done
require_name

repo="$(cd "$(dirname "$0")/../.." && pwd)"
tarball="${TMPDIR:-/tmp}/hpa-jax-src.tar.gz"
run git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD
run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:hpa-jax-src.tar.gz" --worker=all \
  --zone="$ZONE" $(project_flag)
run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all --zone="$ZONE" $(project_flag) \
  --command="mkdir -p hpa-jax && tar -xzf hpa-jax-src.tar.gz -C hpa-jax && python3 -m venv hpa-jax/.venv && hpa-jax/.venv/bin/pip install -q -e 'hpa-jax[tpu]'"
