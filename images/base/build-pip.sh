#!/bin/sh
# pip as the image builds run it (bind-mounted into RUN steps, never copied into a layer):
# uses the pip configuration and CA bundle that the build passes as BuildKit secrets, and the
# wheels of the WHEELHOUSE image, when they are there; otherwise plain pip against PyPI.
set -eu
if [ -f /run/secrets/pip.conf ]; then
    export PIP_CONFIG_FILE=/run/secrets/pip.conf
fi
if [ -f /run/secrets/ca-bundle ]; then
    export PIP_CERT=/run/secrets/ca-bundle
fi
if [ "${1:-}" = install ] && [ -d /run/wheelhouse ]; then
    shift
    exec pip install --find-links /run/wheelhouse "$@"
fi
exec pip "$@"
