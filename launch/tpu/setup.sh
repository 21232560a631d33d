#!/usr/bin/env bash
# Install hpa-jax on every worker of a TPU VM: copy this checkout's HEAD (committed files only) as
# a tarball, then pip install it with the TPU build of jaxlib into ~/hpa-jax/.venv, under a
# Python new enough for hpa-jax (>= 3.11; the v4 image, tpu-ubuntu2204-base, ships 3.10, so
# python3.11 comes from Ubuntu's own packages). Safe to run again (a new HEAD, a recreated VM).
#
#   launch/tpu/setup.sh --name=hpa-v4-32 [--zone=Z] [--project=P] [--python=python3.11] \
#       [--dry-run]
source "$(dirname "$0")/common.sh"

PYTHON="python3.11"
for arg in "$@"; do
  common_flag "$arg" && continue
  case "$arg" in
    --python=*) PYTHON="${arg#*=}" ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown flag $arg (see --help)" ;;
  esac
done
require_name
[[ "$PYTHON" =~ ^python3\.[0-9]+$ ]] || die "--python=$PYTHON: give python3.N"

repo="$(cd "$(dirname "$0")/../.." && pwd)"
tarball="${TMPDIR:-/tmp}/hpa-jax-src.tar.gz"
install="set -e; if ! $PYTHON -c 'import ensurepip' 2>/dev/null; then sudo apt-get update -qq"
install+=" && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PYTHON $PYTHON-venv; fi"
install+="; mkdir -p hpa-jax && tar -xzf hpa-jax-src.tar.gz -C hpa-jax"
install+=" && { [ -x hpa-jax/.venv/bin/pip ] || $PYTHON -m venv hpa-jax/.venv; }"
install+=" && hpa-jax/.venv/bin/pip install -q -e 'hpa-jax[tpu]'"
run git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD
run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:hpa-jax-src.tar.gz" --worker=all \
  --zone="$ZONE" $(project_flag)
run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all --zone="$ZONE" $(project_flag) \
  --command="$install"
