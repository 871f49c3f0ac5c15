#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-only
# Set up everything the tests need, then run ruff and mypy and every tier:
# allocator, device, cli, generator, fuse and system.  As root the fuse and system tiers are required: a test in
# them that cannot run fails instead of skipping (ZRAMFS_SYSTEM_TESTS=require).
# The allocator runs compiled with mypyc (setup.py) in that run; without extra arguments, the allocator
# and device tiers then run again with it from source (ZRAMFS_PURE_PYTHON=1), since both must work.
# Extra arguments go to pytest (and skip the second run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export ZRAMFS_SYSTEM_TESTS="${ZRAMFS_SYSTEM_TESTS:-require}"
# Lint and types first (seconds), then every test; either failing fails the run.
lint=0
.venv/bin/ruff check --quiet . || lint=1
.venv/bin/ruff format --check --quiet . || lint=1
.venv/bin/mypy || lint=1
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$#" = 0 ]; then
    echo "test.sh: the allocator and device tiers again, the allocator from source (ZRAMFS_PURE_PYTHON=1)"
    ZRAMFS_PURE_PYTHON=1 .venv/bin/python -m pytest tests/allocator tests/device || status=$?
fi
if [ "$status" = 0 ] && [ "$lint" != 0 ]; then
    echo "test.sh: ruff or mypy found problems (above)" >&2
    status=1
fi
exit "$status"
