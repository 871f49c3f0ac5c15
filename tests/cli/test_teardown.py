"""Teardown planning against fake machines, and claiming a name: decided without root."""

import fcntl
import os
import pathlib

import pytest

from tests.cli.conftest import RUN_DIR
from zramfs.cli import DeviceNotFoundError, DiskBusyError, NameInUseError
from zramfs.cli._common import Undo, claim, forget
from zramfs.cli._reset import in_use, plan_reset
from zramfs.cli._teardown import Step, plan_swapoff, plan_umount


def _swap_device(machine, name="zram0", pid=4242):
    mountpoint = f"/run/zramfs/{name}"
    machine.mount(mountpoint, name)
    machine.loop(0, f"{mountpoint}/disk")
    machine.swap("/dev/loop0")
    machine.daemon(name, mountpoint, pid=pid, start_time=777)
    return mountpoint


def test_swapoff_of_a_whole_device_undoes_swapon_in_reverse(machine):
    mp = _swap_device(machine)
    assert plan_swapoff(machine.system(), "zram0") == [
        Step("swapoff", "/dev/loop0"),
        Step("detach", "/dev/loop0"),
        Step("unmount", mp),
        Step("stop", mp, pid=4242, start_time=777),
        Step("rmdir", mp),
        Step("forget", "zram0"),
    ]


def test_swapoff_plans_only_what_is_still_there(machine):
    """Swap and loop already undone by hand, the daemon killed: unmount the dead mount and tidy up."""
    mp = "/run/zramfs/zram0"
    machine.mount(mp, "zram0")
    machine.daemon("zram0", mp, pid=4242, alive=False)
    assert plan_swapoff(machine.system(), "zram0") == [
        Step("unmount", mp),
        Step("rmdir", mp),
        Step("forget", "zram0"),
    ]


def test_swapoff_of_a_loop_that_is_no_longer_swap_only_detaches_it(machine):
    mp = "/run/zramfs/zram0"
    machine.mount(mp, "zram0")
    machine.loop(7, f"{mp}/disk")
    steps = plan_swapoff(machine.system(), "zram0")
    assert steps[:2] == [Step("detach", "/dev/loop7"), Step("unmount", mp)]


def test_swapoff_of_leftover_directories_only(machine):
    os.makedirs(os.path.join(machine.root, "run/zramfs/zram3"))
    machine.device_dir("zram3")
    assert plan_swapoff(machine.system(), "zram3") == [
        Step("rmdir", "/run/zramfs/zram3"),
        Step("forget", "zram3"),
    ]


def test_swapoff_refuses_what_is_not_swapons(machine):
    system = machine.system()
    with pytest.raises(
        DeviceNotFoundError,
        match=r"^no zramfs device named 'zram9' \(nothing at /run/zramfs/zram9\)$",
    ):
        plan_swapoff(system, "zram9")
    machine.mount("/run/zramfs/t", "t", fstype="tmpfs")
    with pytest.raises(DeviceNotFoundError, match=r"^/run/zramfs/t is a tmpfs mount, not zramfs$"):
        plan_swapoff(system, "t")
    machine.mount("/mnt/z", "z1")
    machine.daemon("z1", "/mnt/z", pid=5)
    with pytest.raises(
        DeviceNotFoundError,
        match=r"^'z1' is mounted at /mnt/z, not made by swapon \(zramfs umount it\)$",
    ):
        plan_swapoff(system, "z1")


def test_umount_waits_for_the_daemon_its_record_names(machine):
    machine.mount("/mnt/z", "z1")
    machine.daemon("z1", "/mnt/z", pid=31, start_time=1)
    assert plan_umount(machine.system(), "/mnt/z") == [
        Step("unmount", "/mnt/z"),
        Step("stop", "/mnt/z", pid=31, start_time=1),
        Step("forget", "z1"),
    ]


def test_umount_of_a_mount_without_a_record_only_unmounts(machine):
    # Another user's run directory, or a daemon started by hand: nothing to wait for.
    machine.mount("/mnt/z", "z1")
    assert plan_umount(machine.system(), "/mnt/z") == [Step("unmount", "/mnt/z")]


def test_umount_refuses_while_a_loop_device_holds_disk(machine):
    machine.mount("/mnt/z", "z1")
    machine.loop(4, "/mnt/z/disk")
    with pytest.raises(
        DiskBusyError, match=r"^/mnt/z/disk is still attached to /dev/loop4 \(zramfs swapoff z1, "
    ):
        plan_umount(machine.system(), "/mnt/z")


def test_umount_of_something_else_is_not_found(machine):
    machine.mount("/mnt/t", "tmpfs", fstype="tmpfs")
    with pytest.raises(DeviceNotFoundError, match=r"^/mnt/t is not a zramfs mount$"):
        plan_umount(machine.system(), "/mnt/t")


def test_forget_leaves_a_directory_someone_holds(machine):
    """The forget step removes only a leftover: a directory whose lock nobody holds."""
    system = machine.system()
    path = machine.device_dir("z1")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        forget(system, "z1")
        assert os.path.isdir(path)
    finally:
        os.close(fd)
    forget(system, "z1")
    assert not os.path.exists(path)


def test_claim_takes_a_leftover_but_not_a_held_or_foreign_directory(machine):
    # A fake root: on the real one, another zramfs mount named zram0 (a test
    # running meanwhile) would rightly make the first free name zram1.
    sys_ = machine.system()
    run = pathlib.Path(machine.root, RUN_DIR.lstrip("/"))
    undo = Undo()
    name, held = claim(sys_, None, undo)
    assert name == "zram0" and os.path.isdir(run / ".zram0")
    # Held (by this command, later by its daemon): the next one gets zram1.
    other = Undo()
    assert claim(sys_, None, other)[0] == "zram1"
    other.run()
    with pytest.raises(NameInUseError, match=r"^name 'zram0' is in use \(claimed: "):
        claim(sys_, "zram0", Undo())
    undo.run()
    assert not run.exists()  # undo: the claim and the run directory it made
    # A leftover whose lock nobody holds is taken over; one with files of someone else's is not.
    leftover = run / ".zram0"
    leftover.mkdir(parents=True)
    (leftover / "daemon.log").write_text("old\n")
    undo = Undo()
    assert claim(sys_, "zram0", undo)[0] == "zram0"
    undo.run()
    leftover.mkdir(parents=True)
    (leftover / "notes.txt").write_text("mine\n")
    with pytest.raises(NameInUseError, match=r"left over with files zramfs did not write\)$"):
        claim(sys_, "zram0", Undo())


def test_reset_of_swap_is_swapoffs_plan_and_the_swap_is_its_use(machine):
    _swap_device(machine)
    steps = plan_reset(machine.system(), "zram0")
    assert steps == plan_swapoff(machine.system(), "zram0")
    assert in_use(steps) == ["swap"]  # refused without --force


def test_reset_of_a_mounted_device_unmounts_the_filesystem_on_its_loop_first(machine):
    machine.mount("/mnt/z", "z1")
    machine.loop(4, "/mnt/z/disk")
    machine.mount("/srv/data", "/dev/loop4", fstype="ext4")
    machine.daemon("z1", "/mnt/z", pid=55, start_time=66)
    steps = plan_reset(machine.system(), "z1")
    assert steps == [
        Step("unmount-fs", "/srv/data"),
        Step("detach", "/dev/loop4"),
        Step("unmount", "/mnt/z"),
        Step("stop", "/mnt/z", pid=55, start_time=66),
        Step("forget", "z1"),
    ]  # the user's /mnt/z stays
    assert in_use(steps) == ["mounted at /srv/data"]


def test_reset_of_an_unused_device_needs_no_force(machine):
    """Uninitialised or not: a FUSE mount with no loop device on it."""
    machine.mount("/mnt/u", "u1")
    machine.daemon("u1", "/mnt/u", pid=56, start_time=67)
    steps = plan_reset(machine.system(), "u1")
    assert steps == [
        Step("unmount", "/mnt/u"),
        Step("stop", "/mnt/u", pid=56, start_time=67),
        Step("forget", "u1"),
    ]
    assert in_use(steps) == []


def test_reset_takes_what_a_killed_mount_left(machine):
    machine.daemon("k1", "/mnt/k", pid=57, alive=False)
    assert plan_reset(machine.system(), "k1") == [Step("forget", "k1")]


def test_reset_of_nothing_is_not_found(machine):
    with pytest.raises(DeviceNotFoundError):
        plan_reset(machine.system(), "zram9")
