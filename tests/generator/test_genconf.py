"""zram-size expressions, the setup's refusals, and the system install's file list.

The expressions are fasteval's (zram-generator's) arithmetic over ``ram`` in
MiB; each case states the value worked out by hand.  The setup of a refused
or broken device must fail before it touches anything, with one line naming
the reason: that line is what ``systemctl status`` and the journal show.
"""

import os
import subprocess
import sys

import pytest

from zramfs import genconf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
    "text, value",
    [
        ("min(ram / 2, 4096)", 4096),  # the default, ram = 10000
        ("min(min(ram, 4096) + max(ram - 4096, 0) / 2, 32 * 1024)", 4096 + 5904 / 2),
        ("ram / 10", 1000),
        ("2 ^ 3 ^ 2", 512),  # right-associative
        ("-2 ^ 2", -4),  # unary minus below ^, as fasteval
        ("(1 + 2) * 3 - 4 / 2", 7),
        ("10 % 4 + 1k + 2M / 1M", 2 + 1000 + 2),  # SI suffixes
        ("round(2.5) + round(-2.5) + round(1000, 1499)", 3 - 3 + 1000),  # half away from zero
        ("int(-2.7) + ceil(1.1) + floor(1.9) + abs(-3)", -2 + 2 + 1 + 3),
        ("log(100) + log(2, 8)", 2 + 3),
        ("max(1, 2, 3) + min(4)", 7),
    ],
)
def test_expressions(text, value):
    assert genconf.evaluate(text, {"ram": 10000}) == pytest.approx(value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "expression is empty"),
        ("min(ram / 2", "'min(ram / 2': expected ')', found the end"),
        ("ram // 2", "'ram // 2': expected a number, found '/'"),
        ("ram / 0", "'ram / 0': division by zero"),
        ("swap * 2", "'swap * 2': unknown variable 'swap'"),
        ("sqrt(ram)", "'sqrt(ram)': unknown function 'sqrt'"),
        ("abs(1, 2)", "'abs(1, 2)': abs() takes 1 arguments, got 2"),
        ("ram > 2", "'ram > 2': unexpected '>'"),
        ("2 3", "'2 3': unexpected '3'"),
    ],
)
def test_bad_expressions(text, message):
    with pytest.raises(genconf.ExpressionError) as info:
        genconf.evaluate(text, {"ram": 10000})
    assert str(info.value) == message


def _root(tmp_path, conf):
    (tmp_path / "proc").mkdir(parents=True)
    (tmp_path / "proc" / "meminfo").write_text("MemTotal:        8013220 kB\n")
    (tmp_path / "etc" / "zramfs").mkdir(parents=True)
    (tmp_path / "etc" / "zramfs" / "zramfs-generator.conf").write_text(conf)
    return str(tmp_path)


def _setup(root, name):
    return subprocess.run(
        [sys.executable, "-m", "zramfs.generator", "--setup-device", name],
        env={**os.environ, "ZRAMFS_GENERATOR_ROOT": root},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "conf, line",
    [
        (
            "[zram0]\nwriteback-device = /var/lib/wb.img\n",
            "zram0: refused: writeback-device /var/lib/wb.img: writeback is not supported by zramfs yet",
        ),
        (
            "[zram0]\ncompression-algorithm = zstd(level=3)\n",
            "zram0: refused: compression-algorithm zstd(level=3): algorithm parameters are not supported by zramfs yet",
        ),
        (
            "[zram0]\noptions = discard=once\n",
            "zram0: refused: options 'discard=once': zramfs swap always runs swapon --discard; "
            "other swap options are not supported yet",
        ),
        (
            "[zram0]\nzram-size = ram * (\n",
            "zram0: refused: zram-size 'ram * (': expected a number, found the end",
        ),
        (
            "[zram0]\nhost-memory-limit = 1024\n",
            "zram0: system has too much memory (7825 MiB), "
            "host-memory-limit is 1024 MiB, not creating it",
        ),
        (
            "[zram1]\n",
            "zram0: no [zram0] section in the config (/etc/zramfs/zramfs-generator.conf)",
        ),
    ],
)
def test_setup_refuses_with_one_line(tmp_path, conf, line):
    proc = _setup(_root(tmp_path, conf), "zram0")
    assert proc.returncode == 2
    assert proc.stderr == f"zramfs-generator: {line}\n"


def test_system_install_and_uninstall_into_destdir(tmp_path):
    """setup.sh --system puts every piece where systemd looks; --uninstall leaves nothing."""
    dest = tmp_path / "root"
    env = {**os.environ, "DESTDIR": str(dest)}
    for _ in range(2):  # a second run changes nothing and does not fail
        proc = subprocess.run(
            [os.path.join(REPO, "scripts", "setup.sh"), "--system"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout
    links = {
        "usr/local/sbin/zramfs": "/opt/zramfs/bin/zramfs",
        "usr/local/sbin/zramfs-generator": "/opt/zramfs/bin/zramfs-generator",
        "usr/local/lib/systemd/system-generators/zramfs-generator": "/opt/zramfs/bin/zramfs-generator",
    }
    for path, target in links.items():
        assert os.readlink(dest / path) == target
    for unit in ("zramfs-setup@.service", "zramfs-swap@.service"):
        with (
            open(dest / "usr/local/lib/systemd/system" / unit) as f,
            open(os.path.join(REPO, "systemd", unit)) as g,
        ):
            assert f.read() == g.read()
    # The installed generator runs, from its own environment.
    out = tmp_path / "units"
    conf_root = _root(tmp_path / "conf", "[zram0]\n")
    proc = subprocess.run(
        [str(dest / "opt/zramfs/bin/zramfs-generator"), str(out)],
        env={**os.environ, "ZRAMFS_GENERATOR_ROOT": conf_root},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert os.path.islink(out / "swap.target.wants" / "zramfs-setup@zram0.service")
    for _ in range(2):
        proc = subprocess.run(
            [os.path.join(REPO, "scripts", "setup.sh"), "--uninstall"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout
    left = [os.path.join(d, f) for d, ds, fs in os.walk(dest) for f in fs + ds]
    assert sorted(os.path.relpath(p, dest) for p in left) == [
        "opt",
        "usr",
        "usr/local",
        "usr/local/lib",
        "usr/local/sbin",
    ]
