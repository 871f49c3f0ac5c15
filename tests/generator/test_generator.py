"""zramfs-generator rendered over fake root trees, diffed against expected trees.

In the style of zram-generator's test suite: each folder under ``cases/`` is
a root (``proc/meminfo``, maybe ``proc/cmdline``, config files and drop-ins)
plus ``expected/`` (the units the generator must write: files and links) and
``expected.log`` (what it must say on stderr: warnings and refusals, which are
what a person reads in the journal).  An ``env`` file adds environment
variables (the container check reads ``SYSTEMD_VIRTUALIZATION``).

Set ZRAMFS_UPDATE_EXPECTED=1 to rewrite the expected trees from the
generator's output (then read the diff before committing it).
"""

import os
import shutil
import subprocess
import sys

import pytest

CASES = os.path.join(os.path.dirname(__file__), "cases")


def _tree(top):
    """{relative path: ('file', text) or ('link', target)} for everything under `top`."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top)
            if os.path.islink(path):
                tree[rel] = ("link", os.readlink(path))
            else:
                with open(path) as f:
                    tree[rel] = ("file", f.read())
    tree.pop(".empty", None)
    return tree


def run_generator(root, outdir, *, env=None):
    full_env = {k: v for k, v in os.environ.items() if k != "SYSTEMD_VIRTUALIZATION"}
    full_env.update(env or {})
    full_env["ZRAMFS_GENERATOR_ROOT"] = root
    return subprocess.run(
        [sys.executable, "-m", "zramfs.generator", outdir, outdir + ".early", outdir + ".late"],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _case_env(case):
    env = {}
    path = os.path.join(case, "env")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    key, value = line.strip().split("=", 1)
                    env[key] = value
    return env


@pytest.mark.parametrize("name", sorted(os.listdir(CASES)))
def test_case(name, tmp_path):
    case = os.path.join(CASES, name)
    out = str(tmp_path / "normal")
    proc = run_generator(case, out, env=_case_env(case))
    assert proc.returncode == 0, proc.stderr
    # The generator writes only into the first (normal) directory.
    assert not os.path.exists(out + ".early") and not os.path.exists(out + ".late")
    expected_dir = os.path.join(case, "expected")
    expected_log = os.path.join(case, "expected.log")
    if os.environ.get("ZRAMFS_UPDATE_EXPECTED"):
        shutil.rmtree(expected_dir, ignore_errors=True)
        if os.path.isdir(out):
            shutil.copytree(out, expected_dir, symlinks=True)
        else:
            os.makedirs(expected_dir)
            open(os.path.join(expected_dir, ".empty"), "w").close()
        with open(expected_log, "w") as f:
            f.write(proc.stderr)
    got = _tree(out) if os.path.isdir(out) else {}
    assert got == _tree(expected_dir)
    with open(expected_log) as f:
        assert proc.stderr == f.read()


def test_cases_cover_the_issue():
    """Size expressions, devices, drop-ins, host-memory-limit, mounts, writeback (a file and a
    block device), bad keys, containers, algorithm lists, swap options, and a swap device's
    units both ways: a .swap unit outside a container, the setup's own swapon inside."""
    names = set(os.listdir(CASES))
    for needed in (
        "02-size-expressions",
        "03-dropins",
        "04-host-memory-limit",
        "05-mount-point",
        "06-writeback",
        "07-bad-keys",
        "08-container",
        "09-container-allowed",
        "14-algorithms",
        "15-swap-options",
        "16-swap-unit",
        "17-container-swap",
    ):
        assert needed in names


def test_bad_arguments_are_one_line_and_exit_2(tmp_path):
    for argv in ([], ["--setup-device"], ["--setup-device", "swap0"], ["a", "b", "c", "d"]):
        proc = subprocess.run(
            [sys.executable, "-m", "zramfs.generator", *argv],
            env={**os.environ, "ZRAMFS_GENERATOR_ROOT": str(tmp_path)},
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2, argv
        assert proc.stderr.startswith(("usage: zramfs-generator", "zramfs-generator: ")), (
            proc.stderr
        )
