"""zramfs.system and `zramfs status` against fake machines: discovery without root."""

import fcntl
import os

import pytest

from zramfs.cli import _status
from zramfs.config import ConfigError
from zramfs.system import MM_STAT_COLUMNS, parse_mm_stat

MM_STAT = "1048576    43210    61440        0    61440        3        0        1        1\n"


def test_mm_stat_has_one_parser_with_the_kernels_column_names():
    stats = parse_mm_stat(MM_STAT)
    assert list(stats) == list(MM_STAT_COLUMNS)
    assert (stats["orig_data_size"], stats["compr_data_size"], stats["mem_used_total"]) == (
        1048576,
        43210,
        61440,
    )
    assert stats["huge_pages_since"] == 1
    # Older kernels print fewer columns: those that are there are read.
    assert parse_mm_stat("1 2 3 4 5 6 7") == dict(zip(MM_STAT_COLUMNS[:7], range(1, 8)))


def _two_devices(machine):
    """zram0: swapon's, on loop3, swapping, daemon alive; disk1: a mount whose daemon was killed."""
    machine.mount("/run/zramfs/zram0", "zram0")
    machine.attrs(
        "/run/zramfs/zram0",
        disksize="67108864\n",
        mm_stat=MM_STAT,
        comp_algorithm="lzo [lz4] zstd\n",
    )
    machine.loop(3, "/run/zramfs/zram0/disk")
    machine.swap("/dev/loop3")
    machine.daemon("zram0", "/run/zramfs/zram0", pid=4242)
    machine.mount("/mnt/my disk", "disk1")  # mountinfo escapes the space
    machine.daemon("disk1", "/mnt/my disk", pid=4343, backend="pyfuse3", alive=False)


def test_status_reads_devices_from_the_machine(machine):
    _two_devices(machine)
    system = machine.system()
    rows = [_status.row(d, system) for d in system.devices()]
    assert rows == [
        # A dead FUSE mount answers nothing (ENOTCONN; here: no files): empty cells, null in JSON.
        {"name": "disk1", "disksize": None, "data": None, "compr": None, "algorithm": None, "streams": None,
         "zero-pages": None, "total": None, "mem-limit": None, "mem-used": None, "migrated": None,
         "comp-ratio": None, "mountpoint": None, "loop": None, "dir": "/mnt/my disk", "backend": None,
         "discard": None},
        {"name": "zram0", "disksize": 64 << 20, "data": 1048576, "compr": 43210, "algorithm": "lz4", "streams": None,
         "zero-pages": 3, "total": 61440, "mem-limit": 0, "mem-used": 61440, "migrated": 0, "comp-ratio": 17.07,
         "mountpoint": "[SWAP]", "loop": "/dev/loop3", "dir": "/run/zramfs/zram0", "backend": "dev",
         "discard": True},
    ]  # fmt: skip
    # zramctl's default columns and layout (as util-linux 2.38's zramctl prints a
    # kernel device): numbers right-aligned, sizes at least 5 wide, every
    # column padded but the last, whose separator stays when it is empty.
    assert _status.render(rows) == [
        "NAME  ALGORITHM DISKSIZE  DATA COMPR TOTAL STREAMS MOUNTPOINT",
        "disk1                                              ",
        "zram0 lz4            64M    1M 42.2K   60K         [SWAP]",  # STREAMS empty
    ]
    # -n: the headings still count for the widths.
    assert _status.render(
        rows[1:], ("ALGORITHM", "DISKSIZE", "MOUNTPOINT"), in_bytes=True, headings=False
    ) == [
        "lz4       67108864 [SWAP]",
    ]
    # --raw: one space between cells, none padded, an empty cell empty, a space escaped.
    assert _status.render(rows, ("NAME", "DISKSIZE", "DIR", "MOUNTPOINT"), raw=True) == [
        "NAME DISKSIZE DIR MOUNTPOINT",
        "disk1  /mnt/my\\x20disk ",
        "zram0 64M /run/zramfs/zram0 [SWAP]",
    ]
    assert _status.render([]) == []  # like zramctl: no devices, no output


def test_mountpoint_is_where_the_loop_device_is_mounted(machine):
    machine.mount("/mnt/z", "z1")
    machine.attrs("/mnt/z", disksize="67108864\n", mm_stat=MM_STAT, comp_algorithm="[zstd]\n")
    machine.loop(5, "/mnt/z/disk")
    machine.mount("/srv/data", "/dev/loop5", fstype="ext4")
    system = machine.system()
    (device,) = system.devices()
    assert _status.row(device, system)["mountpoint"] == "/srv/data"


@pytest.mark.parametrize(
    "text, columns",
    [
        ("name,mountpoint", ("NAME", "MOUNTPOINT")),
        ("+LOOP,DIR", _status.DEFAULT_COLUMNS + ("LOOP", "DIR")),
    ],
)
def test_output_columns(text, columns):
    assert _status.parse_columns(text) == columns


def test_unknown_output_column_is_one_error():
    with pytest.raises(ConfigError, match="^unknown column: FROB$"):
        _status.parse_columns("NAME,frob")


def test_backend_and_pid_come_from_the_daemons_record_not_its_command_line(machine):
    machine.mount("/mnt/z", "z1")
    machine.daemon("z1", "/mnt/z", pid=77, backend="pyfuse3")
    (device,) = machine.system().devices()
    assert (device.backend, device.record.pid) == ("pyfuse3", 77)
    # The pid now belongs to another process (another start time): not our daemon.
    machine.process(77, start_time=9999)
    (device,) = machine.system().devices()
    assert device.record is None and device.backend is None


def test_other_filesystems_are_not_devices(machine):
    machine.mount("/mnt/t", "tmpfs", fstype="tmpfs")
    machine.mount("/mnt/f", "sshfs#host:", fstype="fuse.sshfs")
    assert machine.system().devices() == []


def test_a_later_mount_on_the_same_path_hides_the_one_below(machine):
    machine.mount("/mnt/z", "old")
    machine.mount("/mnt/z", "tmpfs", fstype="tmpfs")
    assert machine.system().zramfs_mounts() == []


def test_loops_are_found_by_backing_file_in_number_order(machine):
    machine.loop(10, "/run/zramfs/a/disk")
    machine.loop(2, "/run/zramfs/a/disk")
    machine.loop(3, "/run/zramfs/b/disk")
    system = machine.system()
    assert system.loops_for("/run/zramfs/a/disk") == ["/dev/loop2", "/dev/loop10"]
    assert system.loop_attached("/dev/loop3") and not system.loop_attached("/dev/loop4")


def test_swap_names_are_swapons_devices_only(machine):
    _two_devices(machine)
    os.makedirs(os.path.join(machine.root, "run/zramfs/zram5"))  # a leftover mountpoint
    machine.device_dir("zram6")  # a leftover claim, no record
    machine.mount("/mnt/other", "zram7")
    machine.daemon("zram7", "/mnt/other", pid=99)  # a `mount` device: not swap's to take down
    # The generator's /run config lives in the run directory too: no device.
    os.makedirs(os.path.join(machine.root, "run/zramfs/zramfs-generator.conf.d"))
    with open(os.path.join(machine.root, "run/zramfs/zramfs-generator.conf"), "w") as f:
        f.write("[zram0]\n")
    assert machine.system().swap_names() == ["zram0", "zram5", "zram6"]


def test_a_name_is_taken_while_its_directory_is_locked(machine):
    system = machine.system()
    machine.mount("/run/zramfs/zram0", "zram0")
    assert system.name_taken("zram0") == "name 'zram0' is in use (mounted at /run/zramfs/zram0)"
    path = machine.device_dir("zram1")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a command setting zram1 up, or its daemon
        assert system.name_taken("zram1") == "name 'zram1' is in use (claimed: /run/zramfs/.zram1)"
        assert not system.is_stale("zram1")
    finally:
        os.close(fd)
    # Nobody holds it: left over from a crash, free to claim again.
    assert system.is_stale("zram1") and system.name_taken("zram1") is None
    assert system.name_taken("zram2") is None


@pytest.mark.parametrize("name", ["zram0", "disk1"])
def test_records_round_trip(machine, name):
    _two_devices(machine)
    record = machine.system().daemon_record(name)
    assert record.config.name == name and record.config.run_dir == f"/run/zramfs/.{name}"
