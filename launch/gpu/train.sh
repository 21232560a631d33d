#!/usr/bin/env bash
# Train on one host with one or more GPUs: one process drives all local GPUs, the batch is
# sharded over them on the mesh's data axis (no jax.distributed needed on a single host).
#
#   launch/gpu/train.sh [--gpus=0,1,2,3] [--dry-run] -- --config configs/efficientnet.py:variant=b0 \
#       --workdir runs/b0-gpu
#
# Installs nothing: set up once with `python3 -m venv .venv && .venv/bin/pip install -e '.[gpu]'`.
set -euo pipefail

GPUS=""
DRY_RUN=0
usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }
while [ $# -gt 0 ]; do
  arg="$1"; shift
  case "$arg" in
    --gpus=*) GPUS="${arg#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) break ;;
    *) echo "error: unknown flag $arg (see --help)" >&2; exit 2 ;;
  esac
done
repo="$(cd "$(dirname "$0")/../.." && pwd)"
envs=(XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
      "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true")
[ -n "$GPUS" ] && envs+=("CUDA_VISIBLE_DEVICES=$GPUS")
cmd=(env "${envs[@]}" "$repo/.venv/bin/hpa-jax" train "$@")
echo "+ ${cmd[*]}"
[ "$DRY_RUN" = 1 ] || exec "${cmd[@]}"
