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
from zramfs.generator import BACKING_XATTR, prepare_backing_file, setup_options

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
            "[zram0]\ncompression-algorithm = zstd(level=99)\n",
            "zram0: refused: compression-algorithm zstd(level=99): zstd level must be between 1 and 22, not 99",
        ),
        (
            "[zram0]\ncompression-algorithm = lz4 zstd(windowlog=20)\n",
            "zram0: refused: compression-algorithm zstd(windowlog=20): unknown algorithm parameter "
            "'windowlog' (known: algo, priority, level, dict)",
        ),
        (
            "[zram0]\noptions = discard,pri=5\n",
            "zram0: refused: options 'discard,pri=5': pri=5: zramfs swap runs swapon --discard "
            "and takes no other swap option (only discard, nofail, discard=once, discard=pages)",
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
    root = _root(tmp_path, conf)
    # Each config here must be refused before the setup touches anything:
    # one that is not would set a real device up on this machine.
    dev = genconf.read_config(root).devices.get("zram0")
    assert dev is None or not dev.enabled or dev.problems
    proc = _setup(root, "zram0")
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
    assert os.path.islink(out / "swap.target.wants" / "dev-loop1000.swap")
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


def _device(tmp_path, conf, name="zram0"):
    return genconf.read_config(_root(tmp_path, conf)).devices[name]


def test_setup_options_carry_every_key_zramfs_has(tmp_path):
    """What --setup-device hands `zramfs swapon`/`mount`: zram-generator's
    sysfs writes, as options (without running anything)."""
    conf = """[zram0]
zram-size = 512
zram-resident-limit = 128
compression-algorithm = zstd(level=9) lz4hc(level=10) deflate (type=idle)
writeback-device = /var/lib/zram0.wb
"""
    dev = _device(tmp_path, conf)
    assert setup_options(dev) == [
        "--size", str(512 << 20),
        "--algorithm", "zstd",
        "--algorithm-params", "level=9",
        "--recomp-algorithm", "algo=lz4hc priority=1 level=10",
        "--recomp-algorithm", "algo=deflate priority=2",
        "--backing-dev", "/var/lib/zram0.wb",
        "--mem-limit", str(128 << 20),
    ]  # fmt: skip
    assert not dev.problems


@pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* extended attributes need root")
def test_a_backing_file_the_setup_made_is_emptied_at_the_next_setup(tmp_path):
    path = str(tmp_path / "var" / "lib" / "zram0.wb")
    prepare_backing_file(
        path, "zram0"
    )  # first boot: made empty, 0600, marked, with its directories
    st = os.stat(path)
    assert (st.st_size, st.st_mode & 0o777) == (0, 0o600)
    assert os.getxattr(path, BACKING_XATTR) == b"zram0"
    os.truncate(path, 1 << 20)  # what zramfs leaves behind: the disk's size
    prepare_backing_file(path, "zram0")  # next boot: emptied
    assert os.stat(path).st_size == 0
    # Someone else's file, or another device's, is never touched: zramfs
    # refuses it with its own reason.
    other = tmp_path / "data"
    other.write_bytes(b"precious")
    prepare_backing_file(str(other), "zram0")
    os.truncate(path, 4096)
    prepare_backing_file(path, "zram1")
    assert other.read_bytes() == b"precious" and os.stat(path).st_size == 4096
