#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-only
# Set up everything the tests need, then run every tier: allocator, device,
# fuse and system.  As root the fuse and system tiers are required: a test in
# them that cannot run fails instead of skipping (ZRAMFS_SYSTEM_TESTS=require).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export ZRAMFS_SYSTEM_TESTS="${ZRAMFS_SYSTEM_TESTS:-require}"
exec .venv/bin/python -m pytest "$@"
