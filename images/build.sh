#!/usr/bin/env bash
# Build or push the kftune images under the one naming scheme {REGISTRY}/kftune-{stage}:{TAG}
# (src/kftune/cluster/images.py). `make images` and `make push-images` call this, and so does CI.
#
#   images/build.sh build     the base image(s), then one image per stage
#   images/build.sh push      push the stage images (build them first)
#
# Settings (environment; the Makefile passes its variables of the same names):
#   REGISTRY, TAG      default: DEFAULT_REGISTRY and the package version, read from the source
#   TORCH_VARIANT      cpu (default) or a CUDA variant such as cu126: the torch build of the
#                      train and tune images (base kftune-base-cuda); the other stages stay on CPU
#   BASE_IMAGE         the Python 3.11 image the bases start from (default: the Dockerfile's
#                      python:3.11-slim-bookworm; images/debian-base.sh makes one offline)
#   STAGES             which stage images to build or push (default: all of them)
# Build inputs that never end up in an image layer:
#   PIP_CONF           a pip.conf for the builds (private index, credentials): BuildKit secret
#   CA_BUNDLE          a CA bundle pip trusts in the builds: BuildKit secret
#   WHEELHOUSE         a directory of wheels pip may use (find-links), e.g. a local CPU torch wheel
#   TORCH_INDEX_URL    where torch comes from (default: download.pytorch.org/whl/$TORCH_VARIANT)
#   DOCKER             the docker client (default: docker); it needs BuildKit: buildx, or a
#                      client older than 23 (Debian's docker.io) where DOCKER_BUILDKIT=1 does it
set -euo pipefail
cd "$(dirname "$0")/.."

docker=${DOCKER:-docker}
action=${1:-build}

# The naming scheme's defaults and stage list, read from the source without importing it
# (a `make images` needs no virtual environment).
{ read -r default_registry; read -r default_tag; read -r all_stages; } < <(python3 - <<'EOF'
import ast

def constants(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    return {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name) and isinstance(node.value, (ast.Constant, ast.Tuple))}

images = constants("src/kftune/cluster/images.py")
print(images["DEFAULT_REGISTRY"])
print(constants("src/kftune/__init__.py")["__version__"])
print(" ".join(images["STAGES"]))
EOF
)
if [ -z "${all_stages:-}" ]; then
    echo "images/build.sh: could not read the image scheme from src/kftune/cluster/images.py (needs python3)" >&2
    exit 1
fi
registry=${REGISTRY:-$default_registry}
registry=${registry%/}
tag=${TAG:-$default_tag}
torch_variant=${TORCH_VARIANT:-cpu}
read -r -a stages <<<"${STAGES:-$all_stages}"

image_of() { echo "$registry/kftune-$1:$tag"; }
cpu_base=$registry/kftune-base:$tag
cuda_base=$registry/kftune-base-cuda:$tag

# Stages whose work is training: they get the torch variant asked for (NCCL, torchrun across GPUs).
base_of() {
    case $1 in
        train | tune | pretrain) if [ "$torch_variant" = cpu ]; then echo "$cpu_base"; else echo "$cuda_base"; fi ;;
        *) echo "$cpu_base" ;;
    esac
}

for stage in "${stages[@]}"; do
    case " $all_stages " in *" $stage "*) ;; *) echo "unknown stage '$stage'; expected one of: $all_stages" >&2; exit 2 ;; esac
    [ -f "components/$stage/Dockerfile" ] || { echo "components/$stage/Dockerfile is missing" >&2; exit 2; }
done

# BuildKit: needed for RUN --mount (secrets, wheelhouse). Old clients have it built in.
build_cmd=()
if "$docker" buildx version >/dev/null 2>&1; then
    build_cmd=("$docker" buildx build --load)
else
    client=$("$docker" version --format '{{.Client.Version}}' 2>/dev/null || true)
    if [ -n "$client" ] && [ "${client%%.*}" -lt 23 ] 2>/dev/null; then
        build_cmd=(env DOCKER_BUILDKIT=1 "$docker" build)
    else
        echo "images/build.sh: '$docker' (client ${client:-unknown}) has no BuildKit: install docker buildx," \
            "or point DOCKER at a client that has it built in (Debian's docker.io)" >&2
        exit 2
    fi
fi

# Base builds alone take BASE_IMAGE and TORCH_INDEX_URL; every build may run pip (serve does).
base_args=()
if [ -n "${BASE_IMAGE:-}" ]; then base_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE"); fi
if [ -n "${TORCH_INDEX_URL:-}" ]; then base_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"); fi
pip_args=()
if [ -n "${PIP_CONF:-}" ]; then pip_args+=(--secret "id=pip.conf,src=$PIP_CONF"); fi
if [ -n "${CA_BUNDLE:-}" ]; then pip_args+=(--secret "id=ca-bundle,src=$CA_BUNDLE"); fi

# docker build ... -t IMAGE CONTEXT, timed
build_image() {
    local started=$SECONDS
    "${build_cmd[@]}" --progress=plain "$@"
    echo "images/build.sh: ${*: -2:1} in $(( SECONDS - started )) s" >&2
}

build() {
    if [ -n "${WHEELHOUSE:-}" ]; then
        # The wheels as an image of their own, bind-mounted into the pip steps (never copied).
        printf 'FROM scratch\nCOPY . /\n' | "${build_cmd[@]}" --quiet -f - -t kftune-wheelhouse:build "$WHEELHOUSE" >/dev/null
        pip_args+=(--build-arg WHEELHOUSE=kftune-wheelhouse:build)
    fi
    build_image "${base_args[@]}" "${pip_args[@]}" -f images/base/Dockerfile -t "$cpu_base" .
    local stage needs_cuda=
    for stage in "${stages[@]}"; do [ "$(base_of "$stage")" = "$cuda_base" ] && needs_cuda=1; done
    if [ -n "$needs_cuda" ]; then
        build_image "${base_args[@]}" "${pip_args[@]}" --build-arg "TORCH_VARIANT=$torch_variant" \
            -f images/base/Dockerfile -t "$cuda_base" .
    fi
    for stage in "${stages[@]}"; do
        build_image "${pip_args[@]}" --build-arg "BASE=$(base_of "$stage")" \
            -f "components/$stage/Dockerfile" -t "$(image_of "$stage")" .
    done
    echo "built:"
    for stage in "${stages[@]}"; do echo "  $(image_of "$stage")"; done
}

push() {
    for stage in "${stages[@]}"; do
        "$docker" push "$(image_of "$stage")"
    done
}

case $action in
    build) build ;;
    push) push ;;
    *) echo "usage: images/build.sh build|push" >&2; exit 2 ;;
esac
