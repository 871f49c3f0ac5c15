#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-only
# Set up zramfs on a fresh Debian/Ubuntu machine that has only python3:
# the system packages it needs (only those missing), then .venv with zramfs
# installed in it.  `--test` adds what the test suite and benchmarks need.
# Safe to run again: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
for arg in "$@"; do
    case "$arg" in
        --test) with_tests=1 ;;
        *) echo "setup.sh: error: unknown argument '$arg' (only --test)" >&2; exit 2 ;;
    esac
done

# fuse3: /dev/fuse's userspace side (fusermount3); util-linux: losetup, swapon,
# fallocate, fstrim; libfuse3-dev, pkg-config, gcc, python3-dev: to build the
# optional pyfuse3 backend; e2fsprogs: mkfs/fsck for the disk tests; fio: the
# benchmarks.
packages=(python3-venv python3-dev fuse3 util-linux mount e2fsprogs kmod libfuse3-dev pkg-config gcc)
[ "$with_tests" = 1 ] && packages+=(fio)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup.sh: error: missing packages ${missing[*]}; run as root to install them" >&2
        exit 3
    fi
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The kernel side: FUSE and loop devices (built in on many kernels).
if [ "$(id -u)" = 0 ]; then
    [ -e /dev/fuse ] || modprobe fuse || true
    [ -e /dev/loop-control ] || modprobe loop || true
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup.sh: creating .venv"
    python3 -m venv .venv
fi
extras="pyfuse3"
[ "$with_tests" = 1 ] && extras="pyfuse3,test,bench"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
# pip's own exit status is lost in the pipe above; check the result instead.
.venv/bin/python -c "import zramfs, allocator, trio, lz4" \
    || { echo "setup.sh: error: zramfs did not install into .venv" >&2; exit 1; }
echo "setup.sh: ready (.venv/bin/zramfs)"
