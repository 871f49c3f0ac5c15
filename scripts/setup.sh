#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-only
# Set up zramfs on a fresh Debian/Ubuntu machine that has only python3:
# the system packages it needs (only those missing), then .venv with zramfs
# installed in it.  `--test` adds what the test suite and benchmarks need.
#
# `--system` installs zramfs for the whole machine instead, where systemd and
# root's shell find it: a virtual environment in /opt/zramfs, `zramfs` and
# `zramfs-generator` linked into /usr/local/sbin, the units into
# /usr/local/lib/systemd/system and the generator into
# /usr/local/lib/systemd/system-generators, then `systemctl daemon-reload`
# when systemd runs.  `--uninstall` removes exactly those (never
# /etc/zramfs, which is the administrator's).  DESTDIR=/some/dir puts
# everything under that directory instead (for packaging and tests; the
# virtual environment then runs only from there).
# Safe to run again: every step checks before it acts.
#
# pip compiles the allocator's hot modules with mypyc (setup.py; a C
# compiler and python3-dev, installed below); ZRAMFS_PURE_PYTHON=1 when
# running this script installs the allocator as Python source only.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
mode=dev
for arg in "$@"; do
    case "$arg" in
        --test) with_tests=1 ;;
        --system) mode=system ;;
        --uninstall) mode=uninstall ;;
        *) echo "setup.sh: error: unknown argument '$arg' (--test, --system or --uninstall)" >&2; exit 2 ;;
    esac
done
if [ "$mode" != dev ] && [ "$with_tests" = 1 ]; then
    echo "setup.sh: error: --test sets up .venv; it does not go with --system or --uninstall" >&2
    exit 2
fi

# The system install's places; scripts/setup.sh --uninstall removes these.
destdir="${DESTDIR:-}"
venv_dir=/opt/zramfs
sbin_dir=/usr/local/sbin
unit_dir=/usr/local/lib/systemd/system
generator_dir=/usr/local/lib/systemd/system-generators
units=(zramfs-setup@.service zramfs-swap@.service zramfs@.service)

# Fail unless the allocator came out as asked: compiled by default, from
# source with ZRAMFS_PURE_PYTHON=1 (a build that quietly fell back to source
# would hide a missing compiler).  $1: the python to ask.
check_compiled() {
    local want=True
    [ "${ZRAMFS_PURE_PYTHON:-}" = 1 ] && want=False
    local got
    got="$("$1" -c "import allocator; print(allocator.COMPILED)")"
    if [ "$got" != "$want" ]; then
        echo "setup.sh: error: allocator.COMPILED is $got, expected $want (ZRAMFS_PURE_PYTHON=${ZRAMFS_PURE_PYTHON:-unset})" >&2
        exit 1
    fi
}
compiled_note() {
    if [ "${ZRAMFS_PURE_PYTHON:-}" = 1 ]; then echo "allocator from source"; else echo "allocator compiled with mypyc"; fi
}

reload_systemd() {
    # Only the machine's own systemd, and only if it is running.
    if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
}

if [ "$mode" = uninstall ]; then
    rm -f "$destdir$sbin_dir/zramfs" "$destdir$sbin_dir/zramfs-generator" \
        "$destdir$generator_dir/zramfs-generator"
    for unit in "${units[@]}"; do
        rm -f "$destdir$unit_dir/$unit"
    done
    rm -rf "$destdir$venv_dir"
    # Directories the install may have made, if nothing else is in them.
    for d in "$generator_dir" "$unit_dir" /usr/local/lib/systemd; do
        rmdir "$destdir$d" 2>/dev/null || true
    done
    reload_systemd
    echo "setup.sh: zramfs removed from the system"
    exit 0
fi

# fuse3: /dev/fuse's userspace side (fusermount3); util-linux: losetup, swapon,
# fallocate, fstrim; libfuse3-dev, pkg-config, gcc, python3-dev: to build the
# optional pyfuse3 backend; liblzo2-dev: to build python-lzo (the lzo codec);
# e2fsprogs: mkfs/fsck for the disk tests; fio: the
# benchmarks.
packages=(python3-venv python3-dev fuse3 util-linux mount e2fsprogs kmod libfuse3-dev liblzo2-dev pkg-config gcc)
# systemd-container: systemd-nspawn, which boots a real systemd for
# tests/system/test_systemd.py.
[ "$with_tests" = 1 ] && packages+=(fio systemd-container)

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

if [ "$mode" = system ]; then
    if [ "$(id -u)" != 0 ] && [ -z "$destdir" ]; then
        echo "setup.sh: error: --system needs root" >&2
        exit 3
    fi
    if [ ! -x "$destdir$venv_dir/bin/python" ]; then
        echo "setup.sh: creating $destdir$venv_dir"
        python3 -m venv "$destdir$venv_dir"
    fi
    # A copy, not an editable install: the system's zramfs must not change
    # when this clone does.
    "$destdir$venv_dir/bin/python" -m pip install -q --disable-pip-version-check --upgrade ".[lzo]" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" || true
    "$destdir$venv_dir/bin/python" -c "import zramfs.generator, allocator, trio, lz4" \
        || { echo "setup.sh: error: zramfs did not install into $destdir$venv_dir" >&2; exit 1; }
    check_compiled "$destdir$venv_dir/bin/python"
    mkdir -p "$destdir$sbin_dir" "$destdir$unit_dir" "$destdir$generator_dir"
    ln -sfn "$venv_dir/bin/zramfs" "$destdir$sbin_dir/zramfs"
    ln -sfn "$venv_dir/bin/zramfs-generator" "$destdir$sbin_dir/zramfs-generator"
    ln -sfn "$venv_dir/bin/zramfs-generator" "$destdir$generator_dir/zramfs-generator"
    for unit in "${units[@]}"; do
        install -m 0644 "systemd/$unit" "$destdir$unit_dir/$unit"
    done
    reload_systemd
    echo "setup.sh: ready ($sbin_dir/zramfs; devices from /etc/zramfs/zramfs-generator.conf at boot; $(compiled_note))"
    exit 0
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup.sh: creating .venv"
    python3 -m venv .venv
fi
extras="pyfuse3,lzo"
[ "$with_tests" = 1 ] && extras="pyfuse3,lzo,test,bench"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
# pip's own exit status is lost in the pipe above; check the result instead.
.venv/bin/python -c "import zramfs, allocator, trio, lz4" \
    || { echo "setup.sh: error: zramfs did not install into .venv" >&2; exit 1; }
check_compiled .venv/bin/python
echo "setup.sh: ready (.venv/bin/zramfs; $(compiled_note))"
