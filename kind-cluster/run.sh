#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Run the finetune pipeline on the cluster of up.sh: compile it for the images up.sh pushed
# (localhost:5001/kftune-<stage>:dev), reach the KFP API through a port-forward, upload it and
# start a run with kftune submit, and follow the run until it ends. By default the run also
# publishes the model to s3://kftune-models/finetune and deploys it as the KServe
# InferenceService kftune-finetune, then waits for that to be Ready.
#
# Usage: kind-cluster/run.sh [--gpu] [--param NAME=VALUE]... [--no-deploy] [--timeout SECONDS] [--dry-run]
#   --gpu               compile the train step for one GPU (a cluster made by up.sh --gpu)
#   --param NAME=VALUE  a pipeline parameter (repeatable; replaces a default of the same name)
#   --no-deploy         neither publish nor deploy the model
#   --timeout SECONDS   stop waiting for the run after SECONDS (default 7200; the run goes on)
#   --dry-run           print every command, one per line, and run none
case ${BASH_SOURCE[0]} in */*) here=${BASH_SOURCE[0]%/*} ;; *) here=. ;; esac
# shellcheck source=lib.sh
source "$here/lib.sh"

usage() { sed -n '3,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

GPU=0
DEPLOY=1
TIMEOUT=7200
USER_PARAMS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --gpu) GPU=1 ;;
    --param)
      [[ $# -gt 1 && $2 == *=* ]] || die "--param needs NAME=VALUE"
      USER_PARAMS+=("$2")
      shift
      ;;
    --no-deploy) DEPLOY=0 ;;
    --timeout)
      [[ $# -gt 1 ]] || die "--timeout needs SECONDS"
      TIMEOUT=$2
      shift
      ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

PIPELINE_FILE="$KIND_DIR/.build/finetune.yaml"
if [[ $GPU == 1 ]]; then
  TRAIN_FLAGS=(--gpus 1 --train-cpu 4 --train-memory 16G --shm-size 8Gi)
else
  # What a laptop's Docker can give the train pod beside KFP, Katib and KServe.
  TRAIN_FLAGS=(--gpus 0 --train-cpu 2 --train-memory 6G --shm-size 1Gi)
fi

# The run's parameters: the defaults below, then --param (which replaces a default of its name).
PARAMS=()
if [[ $DEPLOY == 1 ]]; then
  PARAMS=("publish_uri=s3://${MODEL_BUCKET}/finetune" "deploy_name=kftune-finetune")
fi
for given in ${USER_PARAMS[@]+"${USER_PARAMS[@]}"}; do
  kept=()
  for param in ${PARAMS[@]+"${PARAMS[@]}"}; do
    [[ ${param%%=*} == "${given%%=*}" ]] || kept+=("$param")
  done
  PARAMS=(${kept[@]+"${kept[@]}"} "$given")
done
PARAM_FLAGS=()
DEPLOY_NAME=""  # the InferenceService the run deploys, if any
for param in ${PARAMS[@]+"${PARAMS[@]}"}; do
  PARAM_FLAGS+=(--param "$param")
  if [[ ${param%%=*} == deploy_name ]]; then DEPLOY_NAME=${param#*=}; fi
done

# The kftune CLI: the project's virtualenv (make setup) unless $KFTUNE names another.
KFTUNE=${KFTUNE:-}
if [[ -z $KFTUNE ]]; then
  if [[ -x $REPO_ROOT/.venv/bin/kftune ]]; then KFTUNE=$REPO_ROOT/.venv/bin/kftune; else KFTUNE=kftune; fi
fi

PORT_FORWARD_PID=""
stop_port_forward() {
  if [[ -n $PORT_FORWARD_PID ]]; then kill "$PORT_FORWARD_PID" 2>/dev/null || true; fi
}
trap stop_port_forward EXIT

wait_for_kfp_api() {
  [[ $DRY_RUN == 1 ]] && return 0
  local attempt
  for ((attempt = 0; attempt < 60; attempt++)); do
    kill -0 "$PORT_FORWARD_PID" 2>/dev/null || die "kubectl port-forward to svc/ml-pipeline exited (is up.sh done?)"
    if (exec 3<>"/dev/tcp/127.0.0.1/${KFP_API_PORT}") 2>/dev/null; then return 0; fi
    sleep 1
  done
  die "the KFP API did not answer on localhost:${KFP_API_PORT} within 60 s"
}

require kubectl "$KFTUNE"
cd "$REPO_ROOT" || die "cannot cd to $REPO_ROOT"

say "compiling the finetune pipeline for ${REGISTRY}/kftune-<stage>:${IMAGE_TAG}"
run mkdir -p "$KIND_DIR/.build"
run "$KFTUNE" compile --pipeline finetune --registry "$REGISTRY" --tag "$IMAGE_TAG" \
  --output "$PIPELINE_FILE" "${TRAIN_FLAGS[@]}"

say "port-forwarding the KFP API to localhost:${KFP_API_PORT}"
run_bg PORT_FORWARD_PID kubectl --context "$KUBE_CONTEXT" port-forward -n "$NAMESPACE" svc/ml-pipeline \
  "${KFP_API_PORT}:8888"
wait_for_kfp_api

say "submitting the run and following it"
# Standalone KFP: single-user, no namespace, no token. The run link points at the UI's
# port-forward (README.md: kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80).
run env "KF_PIPELINES_UI_ENDPOINT=http://localhost:${KFP_UI_PORT}" \
  "$KFTUNE" submit --host "http://localhost:${KFP_API_PORT}" --pipeline-file "$PIPELINE_FILE" \
  --experiment kftune-kind ${PARAM_FLAGS[@]+"${PARAM_FLAGS[@]}"} --wait --timeout "$TIMEOUT"

if [[ -n $DEPLOY_NAME ]]; then
  say "waiting for InferenceService ${DEPLOY_NAME}"
  kube wait --for=condition=Ready "inferenceservice/${DEPLOY_NAME}" -n "$NAMESPACE" --timeout=10m
  say "served: kubectl --context ${KUBE_CONTEXT} port-forward -n ${NAMESPACE} svc/${DEPLOY_NAME}-predictor 8081:80"
  say "then:   curl -s localhost:8081/v1/models/${DEPLOY_NAME}   (KServe's v1 protocol; components/serve/README.md)"
fi
