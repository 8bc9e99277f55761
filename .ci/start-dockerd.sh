#!/usr/bin/env bash
# Start a Docker engine of our own under DIR (data root, exec root, socket, log), in the
# background, and wait until it answers. Prints the DOCKER_HOST to use. Needs root.
#
#   DOCKER_HOST=$(.ci/start-dockerd.sh DIR)       stop: kill "$(cat DIR/dockerd.pid)"
set -euo pipefail

dir=${1:?usage: start-dockerd.sh DIR}
mkdir -p "$dir"
host=unix://$dir/docker.sock

# setsid: the engine outlives nothing but our own kill, and no terminal signal reaches it.
setsid dockerd --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
    --host "$host" >"$dir/dockerd.log" 2>&1 </dev/null &
pid=$!

for _ in $(seq 60); do
    if DOCKER_HOST=$host docker version >/dev/null 2>&1; then
        echo "$host"
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        break
    fi
    sleep 1
done
echo "start-dockerd.sh: the Docker engine did not come up; its log:" >&2
tail -n 30 "$dir/dockerd.log" >&2
exit 1
