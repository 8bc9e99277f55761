#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Create the local kftune cluster: a kind cluster with a local registry at localhost:5001, the
# pinned upstream components (cert-manager, Kubeflow Pipelines, Kubeflow Trainer, Katib,
# KServe), kftune's manifests (manifests/overlays/kind), a bucket for published models, and the
# kftune images built and pushed to the registry. Then ./kind-cluster/run.sh runs the pipeline.
#
# Usage: kind-cluster/up.sh [--gpu] [--skip-images] [--dry-run]
#   --gpu          a GPU cluster made with nvkind, plus the NVIDIA device plugin (README.md)
#   --skip-images  do not build and push the images (they are already in the registry)
#   --dry-run      print every command, one per line, and run none
# Re-running it is safe: existing registry and cluster are reused, installs are re-applied.
case ${BASH_SOURCE[0]} in */*) here=${BASH_SOURCE[0]%/*} ;; *) here=. ;; esac
# shellcheck source=lib.sh
source "$here/lib.sh"

usage() { sed -n '3,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

GPU=0
SKIP_IMAGES=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --gpu) GPU=1 ;;
    --skip-images) SKIP_IMAGES=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

create_registry() {
  say "local registry ${REGISTRY_NAME} on ${REGISTRY}"
  local running
  capture running "" docker inspect -f '{{.State.Running}}' "$REGISTRY_NAME"
  if [[ $running != true ]]; then
    run docker run -d --restart=always -p "127.0.0.1:${REGISTRY_PORT}:5000" --network bridge \
      --name "$REGISTRY_NAME" "$KIND_REGISTRY_IMAGE"
  fi
}

create_cluster() {
  local clusters
  capture clusters "" kind get clusters
  if [[ $'\n'$clusters$'\n' == *$'\n'"$CLUSTER_NAME"$'\n'* ]]; then
    say "kind cluster ${CLUSTER_NAME} exists; reusing it"
  elif [[ $GPU == 1 ]]; then
    say "kind cluster ${CLUSTER_NAME} with GPUs (nvkind)"
    run nvkind cluster create --name "$CLUSTER_NAME" --image "$KIND_NODE_IMAGE" \
      --config-template "$KIND_DIR/nvkind-config.yaml" --wait 5m
  else
    say "kind cluster ${CLUSTER_NAME}"
    run kind create cluster --name "$CLUSTER_NAME" --image "$KIND_NODE_IMAGE" \
      --config "$KIND_DIR/kind-config.yaml" --wait 5m
  fi
}

# kind's local-registry pattern: each node's containerd maps localhost:5001 to the registry
# container, which joins the "kind" network.
connect_registry() {
  say "wiring ${REGISTRY} into the cluster's nodes"
  local nodes node dir="/etc/containerd/certs.d/localhost:${REGISTRY_PORT}"
  local default_nodes="${CLUSTER_NAME}-control-plane"
  [[ $GPU == 1 ]] && default_nodes+=" ${CLUSTER_NAME}-worker"
  capture nodes "$default_nodes" kind get nodes --name "$CLUSTER_NAME"
  for node in $nodes; do
    run docker exec "$node" mkdir -p "$dir"
    run docker cp "$KIND_DIR/registry-hosts.toml" "${node}:${dir}/hosts.toml"
  done
  local network
  capture network null docker inspect -f '{{json .NetworkSettings.Networks.kind}}' "$REGISTRY_NAME"
  if [[ $network == null ]]; then
    run docker network connect kind "$REGISTRY_NAME"
  fi
  kube apply -f "$KIND_DIR/local-registry-hosting.yaml"
}

install_gpu_device_plugin() {
  say "NVIDIA device plugin ${NVIDIA_DEVICE_PLUGIN_VERSION}"
  run helm repo add nvdp "$NVIDIA_HELM_REPO" --force-update
  run helm upgrade -i nvidia-device-plugin nvdp/nvidia-device-plugin --kube-context "$KUBE_CONTEXT" \
    --namespace nvidia --create-namespace --version "$NVIDIA_DEVICE_PLUGIN_VERSION" --wait --timeout 10m
}

install_cert_manager() {
  say "cert-manager ${CERT_MANAGER_VERSION}"
  kube apply -f "$CERT_MANAGER_URL"
  kube wait --for=condition=Available deployment --all -n cert-manager --timeout=10m
}

install_kfp() {
  say "Kubeflow Pipelines ${KFP_VERSION} (standalone, namespace kubeflow)"
  kube apply -k "$KFP_CLUSTER_SCOPED_URL"
  kube wait --for=condition=established --timeout=120s crd/applications.app.k8s.io
  kube apply -k "$KFP_URL"
  kube wait --for=condition=Available deployment --all -n kubeflow --timeout=20m
}

install_trainer() {
  say "Kubeflow Trainer ${TRAINER_VERSION} (namespace kubeflow-system)"
  kube apply --server-side -k "$TRAINER_URL"
  kube wait --for=condition=Available deployment --all -n kubeflow-system --timeout=10m
  kube apply --server-side -k "$TRAINER_RUNTIMES_URL"
}

install_katib() {
  say "Katib ${KATIB_VERSION} (namespace kubeflow)"
  kube apply --server-side -k "$KATIB_URL"
  kube wait --for=condition=Available -n kubeflow --timeout=10m \
    deployment/katib-controller deployment/katib-db-manager deployment/katib-mysql deployment/katib-ui
}

# Standard (raw Deployment) mode: no Knative or Istio on a laptop. KServe's webhooks take their
# certificates from cert-manager, which must be running first.
install_kserve() {
  say "KServe ${KSERVE_VERSION} (namespace kserve, Standard deployment mode)"
  pipe kubectl --context "$KUBE_CONTEXT" create namespace kserve --dry-run=client -o yaml \
    '|' kubectl --context "$KUBE_CONTEXT" apply -f -
  kube apply --server-side --force-conflicts -f "$KSERVE_CRDS_URL"
  kube apply --server-side --force-conflicts -f "$KSERVE_URL"
  kube patch configmap inferenceservice-config -n kserve --type merge \
    -p '{"data":{"deploy":"{\"defaultDeploymentMode\":\"Standard\"}"}}'
  kube rollout restart deployment/kserve-controller-manager -n kserve
  kube rollout status deployment/kserve-controller-manager -n kserve --timeout=10m
  kube apply --server-side --force-conflicts -f "$KSERVE_RESOURCES_URL"
}

apply_kftune() {
  say "kftune manifests (manifests/overlays/kind)"
  kube apply -k "$REPO_ROOT/manifests/overlays/kind"
  # The model server's S3 credentials: KFP's own, under the keys KServe reads.
  pipe kubectl --context "$KUBE_CONTEXT" get secret mlpipeline-minio-artifact -n "$NAMESPACE" \
    -o "go-template-file=$KIND_DIR/serving-minio-secret.tmpl" \
    '|' kubectl --context "$KUBE_CONTEXT" apply -f -
}

# KFP's object store (SeaweedFS since KFP 2.15, S3 on seaweedfs:9000) gets the bucket that
# run.sh publishes models to; its own shell creates it, so no S3 client is needed here.
create_model_bucket() {
  say "bucket s3://${MODEL_BUCKET}"
  kube rollout status deployment/seaweedfs -n "$NAMESPACE" --timeout=10m
  kube exec -n "$NAMESPACE" deployment/seaweedfs -- sh -c \
    "echo s3.bucket.create --name ${MODEL_BUCKET} | weed shell >/dev/null 2>&1; echo s3.bucket.list | weed shell | grep -qw ${MODEL_BUCKET}"
}

# The nodes pull localhost:5001/kftune-<stage>:dev from the registry: nothing to kind-load.
build_and_push_images() {
  say "kftune images ${REGISTRY}/kftune-<stage>:${IMAGE_TAG}"
  # On the GPU cluster the train and tune images sit on the CUDA base (torch's cu126 wheel).
  run make images "REGISTRY=${REGISTRY}" "TAG=${IMAGE_TAG}" "TORCH_VARIANT=$([[ $GPU == 1 ]] && echo cu126 || echo cpu)"
  run make push-images "REGISTRY=${REGISTRY}" "TAG=${IMAGE_TAG}"
}

if [[ $GPU == 1 ]]; then
  require docker kind nvkind kubectl helm make
else
  require docker kind kubectl make
fi
cd "$REPO_ROOT" || die "cannot cd to $REPO_ROOT"
create_registry
create_cluster
connect_registry
[[ $GPU == 1 ]] && install_gpu_device_plugin
install_cert_manager
install_kfp
install_trainer
install_katib
install_kserve
apply_kftune
create_model_bucket
[[ $SKIP_IMAGES == 1 ]] || build_and_push_images
say "cluster ${CLUSTER_NAME} is ready: ./kind-cluster/run.sh$([[ $GPU == 1 ]] && printf ' --gpu') runs the pipeline"
