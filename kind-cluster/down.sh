#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Delete the local kftune cluster made by up.sh (CPU or GPU: nvkind clusters are kind clusters)
# and its local registry container, with the images pushed to it.
#
# Usage: kind-cluster/down.sh [--keep-registry] [--dry-run]
#   --keep-registry  keep the registry and its images (the next up.sh --skip-images reuses them)
#   --dry-run        print every command, one per line, and run none
case ${BASH_SOURCE[0]} in */*) here=${BASH_SOURCE[0]%/*} ;; *) here=. ;; esac
# shellcheck source=lib.sh
source "$here/lib.sh"

usage() { sed -n '3,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

KEEP_REGISTRY=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --keep-registry) KEEP_REGISTRY=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

require docker kind

say "deleting kind cluster ${CLUSTER_NAME}"
run kind delete cluster --name "$CLUSTER_NAME"

if [[ $KEEP_REGISTRY == 0 ]]; then
  say "deleting registry ${REGISTRY_NAME}"
  registry=""
  capture registry "$REGISTRY_NAME" docker ps -a --filter "name=^${REGISTRY_NAME}\$" --format '{{.Names}}'
  if [[ $registry == "$REGISTRY_NAME" ]]; then
    run docker rm -f "$REGISTRY_NAME"
  else
    say "no registry container ${REGISTRY_NAME}"
  fi
fi
