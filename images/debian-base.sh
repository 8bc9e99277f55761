#!/usr/bin/env bash
# Make a Python 3.11 base image from Debian packages alone, for machines that can reach a
# Debian mirror but no container registry (CI here): debootstrap a minimal bookworm with
# python3 and python3-venv, bring it up to date from bookworm-security, and `docker import` it.
# The result stands in for python:3.11-slim-bookworm as BASE_IMAGE of images/base/Dockerfile.
#
#   images/debian-base.sh [IMAGE]      default IMAGE: kftune-python:3.11-bookworm
#
# Needs root, debootstrap and a Docker engine (DOCKER_HOST is honoured). MIRROR picks the
# Debian mirror (default http://deb.debian.org/debian).
set -euo pipefail

image=${1:-kftune-python:3.11-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
security_mirror=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
docker=${DOCKER:-docker}

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/kftune-rootfs.XXXXXX")
cleanup() {
    # the chroot's /proc must be gone before the tree is removed
    if mountpoint -q "$rootfs/proc"; then umount "$rootfs/proc"; fi
    rm -rf "$rootfs"
}
trap cleanup EXIT

debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$mirror"

# Security updates (python3.11, openssl, libc) that the release itself lacks.
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security_mirror bookworm-security main
EOF
mount -t proc proc "$rootfs/proc"
chroot "$rootfs" apt-get update -qq
DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get upgrade -y -qq
chroot "$rootfs" apt-get clean
umount "$rootfs/proc"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/apt/* "$rootfs"/tmp/*

tar --numeric-owner -C "$rootfs" -c . | "$docker" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase bookworm + python3, python3-venv" \
    - "$image" >/dev/null
echo "made $image ($("$docker" run --rm "$image" python3 --version))"
