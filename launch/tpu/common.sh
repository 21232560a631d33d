# Shared by the launch/tpu scripts: flag parsing helpers and the dry-run switch.
# Every gcloud call goes through `run`, which prints the exact command (shell-quoted) and, unless
# --dry-run was given, executes it.

set -euo pipefail

DRY_RUN=0
ZONE="${HPA_TPU_ZONE:-us-central2-b}"
PROJECT="${HPA_TPU_PROJECT:-}"
NAME="${HPA_TPU_NAME:-}"

die() { echo "error: $*" >&2; exit 2; }

# Print a command as one copy-pasteable line.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

show() {
  local out="" arg
  for arg in "$@"; do out+="$(quote "$arg") "; done
  echo "+ ${out% }"
}

# The comment block under the shebang is each script's --help.
usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }

run() {
  show "$@"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

# Flags every script accepts; the caller's parser handles the rest.
common_flag() {
  case "$1" in
    --dry-run) DRY_RUN=1; return 0 ;;
    --zone=*) ZONE="${1#*=}"; return 0 ;;
    --project=*) PROJECT="${1#*=}"; return 0 ;;
    --name=*) NAME="${1#*=}"; return 0 ;;
  esac
  return 1
}

project_flag() { if [ -n "$PROJECT" ]; then echo "--project=$PROJECT"; fi; }

require_name() { [ -n "$NAME" ] || die "--name=NAME is required (the TPU VM's node id)"; }
