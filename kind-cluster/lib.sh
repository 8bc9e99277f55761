# shellcheck shell=bash source-path=SCRIPTDIR
# shellcheck disable=SC2034  # the names and URLs below are used by the scripts that source this
# Shared by up.sh, run.sh and down.sh: names and versions of the local cluster, and the one
# way those scripts run a command, so that --dry-run can print every command instead.
#
# Sourced, not executed. Works with bash 3.2 (macOS) and later; needs nothing but bash to
# print a dry run.

set -euo pipefail

# Where things are. BASH_SOURCE without dirname(1): a dry run needs no external command.
_lib=${BASH_SOURCE[0]}
case $_lib in
  */*) KIND_DIR=$(cd "${_lib%/*}" && pwd) ;;
  *) KIND_DIR=$(pwd) ;;
esac
REPO_ROOT=$(cd "$KIND_DIR/.." && pwd)
unset _lib

# Pinned versions of kind, its node image and the upstream components: one file for the kind
# cluster and for the real-cluster instructions (manifests/upstream/README.md).
# shellcheck source=../manifests/upstream/versions.env
source "$REPO_ROOT/manifests/upstream/versions.env"

# Names shared by the scripts: what up.sh builds and pushes, run.sh compiles against.
CLUSTER_NAME=${KFTUNE_KIND_CLUSTER:-kftune}
KUBE_CONTEXT="kind-${CLUSTER_NAME}"
REGISTRY_NAME=kind-registry
REGISTRY_PORT=5001
REGISTRY="localhost:${REGISTRY_PORT}"
IMAGE_TAG=dev
NAMESPACE=kubeflow          # standalone KFP runs every pipeline here, as pipeline-runner
MODEL_BUCKET=kftune-models  # where run.sh publishes models (in KFP's object store)
KFP_API_PORT=8888
KFP_UI_PORT=8080

# Upstream installs, from the pinned versions (manifests/upstream/README.md has the same commands).
CERT_MANAGER_URL="https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
KFP_CLUSTER_SCOPED_URL="github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=${KFP_VERSION}"
KFP_URL="github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=${KFP_VERSION}"
TRAINER_URL="https://github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=${TRAINER_VERSION}"
TRAINER_RUNTIMES_URL="https://github.com/kubeflow/trainer.git/manifests/overlays/runtimes?ref=${TRAINER_VERSION}"
KATIB_URL="github.com/kubeflow/katib.git/manifests/v1beta1/installs/katib-standalone?ref=${KATIB_VERSION}"
KSERVE_CRDS_URL="https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}/kserve-crds.yaml"
KSERVE_URL="https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}/kserve.yaml"
KSERVE_RESOURCES_URL="https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}/kserve-cluster-resources.yaml"
NVIDIA_HELM_REPO=https://nvidia.github.io/k8s-device-plugin

DRY_RUN=0

say() { printf '==> %s\n' "$*" >&2; }
die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# An argument as the shell would need it typed: bare when safe, else in single quotes.
_quote() {
  local arg=$1
  if [[ -n $arg && $arg != *[!A-Za-z0-9_./:=@,+%-]* ]]; then
    printf '%s' "$arg"
  else
    printf "'%s'" "${arg//\'/\'\\\'\'}"
  fi
}

# A command line, each argument quoted as needed, joined by spaces.
_cmdline() {
  local line="" arg
  for arg in "$@"; do
    line+="${line:+ }$(_quote "$arg")"
  done
  printf '%s' "$line"
}

# Print "+ LINE" (stdout in a dry run, as the plan; stderr otherwise, as a trace).
_show() {
  if [[ $DRY_RUN == 1 ]]; then printf '+ %s\n' "$1"; else printf '+ %s\n' "$1" >&2; fi
}

# run CMD ARGS...: run a command (print it only, in a dry run).
run() {
  _show "$(_cmdline "$@")"
  [[ $DRY_RUN == 1 ]] || "$@"
}

# pipe CMD1 ARGS... '|' CMD2 ARGS...: run CMD1 | CMD2, printed as one line.
pipe() {
  local -a left=()
  while [[ $# -gt 0 && $1 != '|' ]]; do left+=("$1"); shift; done
  [[ ${#left[@]} -gt 0 && $# -gt 1 ]] || die "pipe: expected CMD1 ... '|' CMD2 ..."
  shift
  _show "$(_cmdline "${left[@]}") | $(_cmdline "$@")"
  [[ $DRY_RUN == 1 ]] || "${left[@]}" | "$@"
}

# run_bg VAR CMD ARGS...: start CMD in the background and put its process id in VAR (a dry
# run prints "CMD &" and sets VAR empty).
run_bg() {
  local _run_bg_var=$1
  shift
  _show "$(_cmdline "$@") &"
  if [[ $DRY_RUN == 1 ]]; then
    printf -v "$_run_bg_var" '%s' ""
  else
    "$@" &
    printf -v "$_run_bg_var" '%s' "$!"
  fi
}

# capture VAR DEFAULT CMD ARGS...: VAR=$(CMD ARGS...), empty when CMD fails (for questions
# such as "does this container exist?"); a dry run prints CMD and sets VAR to DEFAULT.
capture() {
  # (prefixed locals: the caller's VAR may be named like any plain local here)
  local _capture_var=$1 _capture_default=$2 _capture_out
  shift 2
  _show "$(_cmdline "$@")"
  if [[ $DRY_RUN == 1 ]]; then
    _capture_out=$_capture_default
  else
    _capture_out=$("$@" 2>/dev/null) || _capture_out=""
  fi
  printf -v "$_capture_var" '%s' "$_capture_out"
}

# kube ARGS...: kubectl against the kind cluster's context only, never the current one.
kube() { run kubectl --context "$KUBE_CONTEXT" "$@"; }

# require TOOL...: each tool must be on PATH (not checked in a dry run, which runs nothing).
require() {
  [[ $DRY_RUN == 1 ]] && return 0
  local tool missing=()
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [[ ${#missing[@]} -eq 0 ]] || die "not installed: ${missing[*]} (see kind-cluster/README.md)"
}
