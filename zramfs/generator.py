"""``zramfs-generator``: zram-generator for zramfs -- units at boot, and the setup they run.

Where this sits: before the whole data path exists.  systemd runs it early at
boot (and on every ``daemon-reload``) as a generator, systemd.generator(7); it
reads the config (``zramfs.genconf``) and writes, per ``[zramN]`` section:

- a setup service, ``zramfs-setup@zramN.service`` (the template in
  ``systemd/``), whose ``ExecStart`` is ``zramfs-generator --setup-device
  zramN`` and ``ExecStop`` ``--reset-device zramN``, with a drop-in
  (``device.conf``) that says what it sets up;
- for a swap device, a ``.swap`` unit for the loop device the setup will
  attach (``swap_loop``), with the config's priority and options
  (``swap_activation``), that needs the setup service and is ordered after
  it, as zram-generator's ``dev-zramN.swap``;
- for a file system device, a ``.mount`` unit for ``mount-point`` that needs
  that service;
- and a drop-in binding the service to its ``.swap`` or ``.mount`` unit, so
  stopping either frees the memory (zram-generator's ``bindings.conf``).

A ``.swap`` unit must name its device before it exists, and zramfs swap is
on a loop device, which ``losetup --find`` numbers at setup time.  So each
swap device gets a fixed loop device, ``/dev/loop(1000+N)`` for zramN,
which the setup makes (LOOP_CTL_ADD) and attaches at (``zramfs swapon
--loop``), refusing if something else holds it.  A udev link (such as
/dev/disk/by-loop-ref/...) would be less robust: systemd matches a .swap
unit to /proc/swaps by the kernel's name or the links udev recorded for
that device, so it would hang on udev having run (a container has none),
on the rules that make such links being installed (systemd's
60-persistent-storage.rules, from systemd-dissect's time on) and on the
reference losetup leaves; a link of our own under /run is not one udev
knows.  The setup then only mounts, attaches and runs mkswap
(``--mkswap-only``); the ``.swap`` unit does swapon, and swapoff when it
stops, before the setup service's stop detaches and unmounts (the unit is
ordered after the service, so it stops first).  The drop-in tells the
setup that loop device (``LOOP_ENV``).

In a container systemd refuses to start or stop ``.swap`` units
(``swap_start`` and ``swap_stop`` return EPERM under ``detect_container``),
so there the generator writes none and links the setup service into
swap.target's wants: the setup service itself runs ``zramfs swapon`` with
the same priority, and ``zramfs swapoff`` when it stops (before the daemon
goes: swapoff is what ends the daemon).  A file system
device's ``.mount`` unit mounts ``/run/zramfs-generator/zramN``, a link the
setup points at the loop device; a path outside /dev keeps systemd from
waiting for a udev device unit (mounts, unlike swaps, are tracked by where).

The setup (``--setup-device``) reads the config again, as zram-generator's
does, and drives the public CLI: ``zramfs swapon``, or ``zramfs mount`` +
``losetup`` + ``mkfs``, with the options zram-generator's sysfs writes
become (``setup_options``); a backing file it made at an earlier boot it
empties first (``prepare_backing_file``).  The reset (``--reset-device``)
reads no config, so it works after the config is gone; it also removes the
fixed loop device once detached, so that no ``losetup --find`` takes it
before the next start.  A device the config refuses gets its
service anyway, and that service fails with the reason: one line in the
journal, never a silent skip.

Like zram-generator, it does nothing in a container unless told (the
container's init command line, or the kernel's, says
``systemd.zramfs.container=1``): a container usually has neither /dev/fuse nor
loop devices.  The container check is systemd's own
(``$SYSTEMD_VIRTUALIZATION``, which systemd 251 and later give generators),
else ``systemd-detect-virt --container``.  ``ZRAMFS_GENERATOR_ROOT`` reads
the config, ``proc/meminfo`` and ``proc/cmdline`` under another root, for
tests; there, the container check looks only at ``$SYSTEMD_VIRTUALIZATION``.
"""

import fcntl
import os
import stat
import subprocess
import sys

from zramfs import codecs, fuse, genconf, launch, mountinfo, system
from zramfs.config import DEFAULT_BACKEND
from zramfs.system import System

__all__ = [
    "main",
    "unit_name_from_path",
    "setup_options",
    "prepare_backing_file",
    "swap_loop",
    "swap_activation",
    "SETUP_TEMPLATE",
    "LINK_DIR",
]

PROG = "zramfs-generator"
SETUP_TEMPLATE = "zramfs-setup@.service"
# Where --setup-device points each file system device's link at its loop device.
LINK_DIR = "/run/zramfs-generator"
# Where the system install puts the template; the wants links point there
# when no unit directory under the root has it.
UNIT_DIRS = (
    "etc/systemd/system",
    "usr/local/lib/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
)
DEFAULT_UNIT_DIR = "/usr/local/lib/systemd/system"

# zramN's swap is on /dev/loop(SWAP_LOOP_BASE + N) outside containers: far
# above the numbers losetup --find hands out (the lowest free), and low
# enough for loop's minor numbers with max_part up to 255 (4095 devices).
SWAP_LOOP_BASE = 1000
# The setup service's drop-in sets it to that loop device: the setup then
# leaves swapon to the .swap unit.
LOOP_ENV = "ZRAMFS_GENERATOR_LOOP"
# The mark of a backing file the setup made (prepare_backing_file): the
# device's name.  trusted.*: only root can set or read it.
BACKING_XATTR = "trusted.zramfs-generator.backing"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_IN_USE = 5  # the CLI's "a loop device (or swap) still holds the disk"
EXIT_NOT_FOUND = 6  # the CLI's "no zramfs device by that name"


def log(message):
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# -- kernel command line and containers -----------------------------------------------


def _cmdline_words(root, test_mode, in_container):
    """Kernel command line words; in a container, systemd reads its own argv instead."""
    if in_container and not test_mode:
        try:
            with open("/proc/1/cmdline", "rb") as f:
                return [w.decode(errors="replace") for w in f.read().split(b"\0")[1:] if w]
        except OSError:
            return []
    try:
        with open(os.path.join(root, "proc/cmdline")) as f:
            return f.read().split()
    except OSError:
        return []


def cmdline_option(words, key):
    """True/False for ``key``, ``key=1``, ``key=0`` (the last one wins), None if absent."""
    for word in reversed(words):
        if word == key:
            return True
        if word.startswith(key + "="):
            value = word[len(key) + 1 :]
            if value in ("1", "yes", "true", "on"):
                return True
            if value in ("0", "no", "false", "off"):
                return False
    return None


def in_container(test_mode):
    """Whether systemd (PID 1) takes itself for a container's: then it runs no .swap units."""
    virt = os.environ.get("SYSTEMD_VIRTUALIZATION")
    if virt is not None:
        return virt.startswith("container:")
    if test_mode:
        return False
    if "SYSTEMD_SCOPE" in os.environ:
        # A generator of systemd 251 or later: PID 1 gives its own view
        # (what swap.c acts on), and no $SYSTEMD_VIRTUALIZATION means none.
        return False
    try:
        return subprocess.run(["systemd-detect-virt", "--quiet", "--container"]).returncode == 0
    except OSError as e:
        log(f"systemd-detect-virt failed, assuming no container: {e}")
        return False


# -- unit files ---------------------------------------------------------------------------


def unit_name_from_path(path, suffix):
    """systemd-escape --path: '/var/tmp/z' -> 'var-tmp-z.mount'."""
    trimmed = path.strip("/")
    if not trimmed:
        return "-" + suffix
    out = []
    prev_slash = False
    for i, b in enumerate(trimmed.encode()):
        if b == ord("/"):
            if not prev_slash:
                out.append("-")
            prev_slash = True
            continue
        prev_slash = False
        c = chr(b)
        if (c.isascii() and c.isalnum()) or c in ":_" or (c == "." and i > 0):
            out.append(c)
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out) + suffix


def _write(outdir, name, text):
    path = os.path.join(outdir, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"# Automatically generated by {PROG}\n\n{text}")


def _link(outdir, wants_dir, name, target):
    path = os.path.join(outdir, wants_dir, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(target, path)


def _template_path(root):
    for d in UNIT_DIRS:
        if os.path.exists(os.path.join(root, d, SETUP_TEMPLATE)):
            return "/" + os.path.join(d, SETUP_TEMPLATE)
    return os.path.join(DEFAULT_UNIT_DIR, SETUP_TEMPLATE)


def _describe(dev):
    """The setup service's Description=: what the config made of the device at boot."""
    if dev.problems:
        return f"zramfs {dev.name} (refused: {'; '.join(dev.problems)})"
    mib = dev.disksize / genconf.MIB
    what = [
        f"disksize {dev.disksize} ({mib:.1f} MiB)",
        " ".join(
            filter(
                None,
                [dev.algorithm or f"{codecs.DEFAULT_ALGORITHM} (default)", dev.algorithm_params],
            )
        ),
    ]
    if dev.recomp_algorithms:
        what.append("recompression " + ", ".join(dev.recomp_algorithms))
    if dev.writeback_device is not None:
        what.append(f"writeback to {dev.writeback_device}")
    if dev.mem_limit:
        what.append(f"mem_limit {dev.mem_limit}")
    if dev.is_swap:
        return f"zramfs swap {dev.name}: {', '.join(what)}, priority {dev.swap_priority}"
    return f"zramfs {dev.effective_fs_type} {dev.name}: {', '.join(what)}, for {dev.mount_point}"


def _writeback_dependencies(path):
    """What the setup service needs before its writeback-device is there.

    A block device: its .device unit, bound and ordered after, as
    zram-generator's bindings.conf does.  A file (zramfs only): the mounts
    on its path (RequiresMountsFor), so /var/lib/... is mounted first, and
    the root file system remounted read-write (systemd-remount-fs, which
    is before local-fs-pre.target: no cycle with a device's own .mount,
    where local-fs.target would make one).
    """
    if path.startswith("/dev/"):
        device = unit_name_from_path(path, ".device").replace("%", "%%")
        return [f"BindsTo={device}", f"After={device}"]
    return [f"RequiresMountsFor={path.replace('%', '%%')}", "After=systemd-remount-fs.service"]


def swap_loop(name):
    """The loop device zramN's swap is attached at when a .swap unit swapons it."""
    return f"/dev/loop{SWAP_LOOP_BASE + int(name[len('zram') :])}"


def swap_activation(dev):
    """How swap device ``dev`` is swapped on: (priority, swapon -o options).

    From ``swap-priority`` and ``options``: the .swap unit's Priority= and
    Options= outside containers, the setup's ``zramfs swapon --priority``
    inside (which adds --discard itself, as the options here do).  zramfs
    swap discards whatever the options say when its FUSE backend can
    (genconf warns where they ask for less, refuses what it cannot do):
    discard is how freed slots give their memory back.  ``nofail`` is
    passed on.
    """
    options = ["discard"] if fuse.supports_discard(DEFAULT_BACKEND) else []
    options += [o for o in genconf.swap_options(dev.options) if o == "nofail"]
    return dev.swap_priority, ",".join(options)


def _write_device_unit(outdir, dev, name, what, target, section, keys):
    """A .swap or .mount unit ``name`` that needs ``dev``'s setup service and
    is ordered after it (as zram-generator's), wanted by ``target``."""
    service = f"zramfs-setup@{dev.name}.service"
    _write(
        outdir,
        name,
        f"""[Unit]
Description=zramfs {what} on {dev.name}
Documentation=man:zram-generator.conf(5)
Requires={service}
After={service}

[{section}]
"""
        + "".join(f"{key}={value}\n" for key, value in keys),
    )
    _link(outdir, f"{target}.wants", name, f"../{name}")


def _write_units(outdir, dev, template, container):
    service = f"zramfs-setup@{dev.name}.service"
    unit = [f"Description={_describe(dev).replace('%', '%%')}"]
    environment = []
    if dev.writeback_device is not None and not dev.problems:
        unit += _writeback_dependencies(dev.writeback_device)
    if dev.is_swap and not dev.problems and not container:
        loop = swap_loop(dev.name)
        bound = unit_name_from_path(loop, ".swap")
        priority, options = swap_activation(dev)
        keys = [("What", loop), ("Priority", priority), ("Options", options)]
        _write_device_unit(outdir, dev, bound, "compressed swap", "swap.target", "Swap", keys)
        # The setup attaches there and leaves swapon to the .swap unit.
        environment.append(f"Environment={LOOP_ENV}={loop}")
    elif dev.problems or dev.is_swap or dev.mount_point is None:
        if not (dev.problems or dev.is_swap):
            return  # fs-type without mount-point: nothing to mount, as zram-generator
        # A refused device's service is still wanted, so that it fails where
        # people look (systemctl --failed) with the reason in the journal;
        # in a container, a swap device's service swapons it.
        target = "swap.target" if dev.is_swap else "local-fs.target"
        _link(outdir, f"{target}.wants", service, template)
        bound = None
    else:
        bound = unit_name_from_path(dev.mount_point, ".mount")
        keys = [
            ("What", f"{LINK_DIR}/{dev.name}"),
            ("Where", dev.mount_point),
            ("Type", dev.effective_fs_type),
            ("Options", dev.options.replace("%", "%%")),
        ]
        _write_device_unit(
            outdir, dev, bound, "compressed storage", "local-fs.target", "Mount", keys
        )
    if bound is not None:
        # Stopping the swap or the mount stops the setup service too, which
        # frees the memory (zram-generator's bindings.conf).
        unit.append(f"BindsTo={bound}")
    text = "[Unit]\n" + "".join(line + "\n" for line in unit)
    if environment:
        text += "\n[Service]\n" + "".join(line + "\n" for line in environment)
    _write(outdir, f"{service}.d/device.conf", text)


def generate(outdir, root="/", test_mode=False):
    """Write the units for every configured device into ``outdir``."""
    container = in_container(test_mode)
    words = _cmdline_words(root, test_mode, container)
    switch = cmdline_option(words, "systemd.zramfs")
    if switch is False:
        log("disabled by systemd.zramfs=0 on the command line")
        return EXIT_OK
    if container and not cmdline_option(words, "systemd.zramfs.container"):
        log("running in a container, doing nothing (systemd.zramfs.container=1 allows it)")
        return EXIT_OK
    config = genconf.read_config(root, extra_devices=("zram0",) if switch else ())
    for warning in config.warnings:
        log(warning)
    if not config.devices:
        log("no devices configured")
        return EXIT_OK
    template = _template_path(root)
    for name in sorted(config.devices, key=lambda n: int(n[4:])):
        dev = config.devices[name]
        for warning in dev.warnings:
            log(f"{name}: {warning}")
        if not dev.enabled:
            continue
        problems = dev.problems
        if not problems and dev.disksize == 0:
            log(f"{name}: zram-size is 0, not creating it")
            continue
        for problem in problems:
            log(f"{name}: {problem} (zramfs-setup@{name}.service will fail)")
        _write_units(outdir, dev, template, container)
    return EXIT_OK


# -- setup and reset ------------------------------------------------------------------


class SetupError(Exception):
    """Raised when a device cannot be set up or reset; the message is the one line logged."""

    def __init__(self, message, code=EXIT_FAILURE):
        super().__init__(message)
        self.code = code


def _zramfs(*args, check=True):
    """The zramfs CLI, through this Python (the venv zramfs-generator runs from),
    isolated as zramfs.launch starts every Python process of ours."""
    proc = subprocess.run(
        [sys.executable, "-I", "-m", "zramfs", *args], cwd="/", env=launch.clean_env()
    )
    if check and proc.returncode != 0:
        raise SetupError(f"zramfs {args[0]} failed (exit {proc.returncode})", proc.returncode)
    return proc.returncode


def _tool(argv):
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise SetupError(
            f"{' '.join(argv)} failed: {lines[-1] if lines else f'exit {proc.returncode}'}"
        )
    return proc.stdout.strip()


def _setup_lock():
    """Held from the loop nodes until losetup is done: setups start in parallel at boot."""
    os.makedirs(LINK_DIR, exist_ok=True)
    fd = os.open(os.path.join(LINK_DIR, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _mounted_at(loop):
    """Mount points whose source is block device ``loop`` (loopN), by major:minor."""
    try:
        with open(f"/sys/block/{loop}/dev") as f:
            dev = f.read().strip()
    except OSError:
        return []
    return [m.mountpoint for m in mountinfo.mounts() if m.dev == dev]


def setup_options(dev):
    """The options ``zramfs swapon`` or ``zramfs mount`` get for ``dev``: what
    zram-generator writes into /sys/block/zramN before ``disksize``."""
    options = ["--size", str(dev.disksize)]
    if dev.algorithm:
        options += ["--algorithm", dev.algorithm]
        if dev.algorithm_params:
            options += ["--algorithm-params", dev.algorithm_params]
    for recomp in dev.recomp_algorithms:
        options += ["--recomp-algorithm", recomp]
    if dev.writeback_device is not None:
        options += ["--backing-dev", dev.writeback_device]
    if dev.mem_limit:
        options += ["--mem-limit", str(dev.mem_limit)]
    return options


def prepare_backing_file(path, name):
    """Make a backing file reusable across boots, and only one made here.

    zramfs takes a backing file that is missing (it creates it) or empty,
    and refuses one with data in it, so that a mistyped path cannot
    overwrite someone's file.  But the file a setup used stays behind at
    the disk's size after a reboot or a crash, and the next boot's setup
    would be refused.  So the setup creates the file itself, empty, 0600
    (and its missing directories, 0755), and marks it with the ``BACKING_XATTR`` extended attribute; a file
    with the mark is emptied at the next setup (written-back pages do not
    outlive the device, in zram either), any other file is left for zramfs
    to judge.  A block device is zramfs's to check.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        # Early at boot, before systemd-tmpfiles, /var/lib may not exist
        # yet on a fresh /var (a volatile root): make the directories.
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.setxattr(fd, BACKING_XATTR, name.encode())
        except OSError as e:  # a filesystem without xattrs: one boot only
            log(
                f"{name}: cannot mark {path} as its backing file ({e.strerror}): "
                "the next boot will find it in use"
            )
        finally:
            os.close(fd)
        return
    if not stat.S_ISREG(st.st_mode) or not st.st_size:
        return
    try:
        mark = os.getxattr(path, BACKING_XATTR)
    except OSError:
        return  # not ours: zramfs refuses it with its reason
    if mark == name.encode():
        os.truncate(path, 0)


def setup_device(name, root="/"):
    words = _cmdline_words(root, False, in_container(False))
    config = genconf.read_config(
        root, extra_devices=("zram0",) if cmdline_option(words, "systemd.zramfs") else ()
    )
    dev = config.devices.get(name)
    if dev is None:
        where = (
            ", ".join("/" + os.path.relpath(f, root) for f in config.files)
            or f"no {genconf.CONF_FILE} file"
        )
        raise SetupError(f"{name}: no [{name}] section in the config ({where})", EXIT_USAGE)
    if not dev.enabled:
        raise SetupError(f"{name}: {dev.warnings[-1]}", EXIT_USAGE)
    for warning in config.warnings + dev.warnings:
        log(f"{name}: {warning}")
    if dev.problems:
        raise SetupError(f"{name}: refused: " + "; ".join(dev.problems), EXIT_USAGE)
    if dev.disksize == 0:
        raise SetupError(f"{name}: zram-size is 0", EXIT_USAGE)
    common = setup_options(dev)
    # Never while a device of this name runs (its backing file is in use):
    # the CLI refuses the taken name then.
    if dev.writeback_device is not None and not os.path.exists(System().device_dir(name)):
        prepare_backing_file(dev.writeback_device, name)
    loop = os.environ.get(LOOP_ENV)
    lock = _setup_lock()
    try:
        if dev.is_swap and loop:
            # The .swap unit swapons it, with its Priority= and Options=.
            _zramfs("swapon", name, "--loop", loop, "--mkswap-only", *common)
            return
        system.make_free_loop_nodes()
        if dev.is_swap:
            # A container's: no .swap unit runs there (zramfs swapon discards itself).
            priority, _ = swap_activation(dev)
            _zramfs("swapon", name, "--priority", str(priority), *common)
            return
        mountpoint = System().swap_mountpoint(name)
        os.makedirs(mountpoint, mode=0o700, exist_ok=True)
        _zramfs("mount", mountpoint, "--name", name, *common)
        try:
            loop = _tool(
                [
                    "losetup",
                    "--find",
                    "--show",
                    "--direct-io=on",
                    "--sector-size",
                    "4096",
                    os.path.join(mountpoint, "disk"),
                ]
            )
        except BaseException:
            _zramfs("umount", mountpoint, check=False)
            raise
    finally:
        os.close(lock)
    try:
        _tool(["mkfs", "-t", dev.effective_fs_type, loop])
        link = os.path.join(LINK_DIR, name)
        tmp = link + ".new"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(loop, tmp)
        os.replace(tmp, link)
    except BaseException:
        subprocess.run(["losetup", "-d", loop])
        _zramfs("umount", mountpoint, check=False)
        raise
    log(f"{name}: {dev.effective_fs_type} on {loop}, for {dev.mount_point}")


def reset_device(name):
    """Undo a setup without reading the config: swapoff/detach/unmount whatever is there."""
    system = System()
    for loop in system.loops_for(os.path.join(system.swap_mountpoint(name), "disk")):
        loop = os.path.basename(loop)
        points = _mounted_at(loop)
        if points:
            raise SetupError(
                f"{name}: /dev/{loop} is still mounted at {', '.join(points)}", EXIT_IN_USE
            )
    code = _zramfs("swapoff", name, check=False)
    if code not in (EXIT_OK, EXIT_NOT_FOUND):
        raise SetupError(f"{name}: zramfs swapoff failed (exit {code})", code)
    link = os.path.join(LINK_DIR, name)
    if os.path.lexists(link):
        os.unlink(link)
    loop = os.environ.get(LOOP_ENV)
    if loop:
        _remove_swap_loop(name, loop)


def _remove_swap_loop(name, loop):
    """Remove the fixed loop device once detached: losetup --find would hand it out."""
    try:
        index = system.loop_index(loop)
    except ValueError as e:
        raise SetupError(f"{name}: ${LOOP_ENV}: {e}", EXIT_USAGE) from None
    if System().loop_attached(loop):
        log(f"{name}: {loop} is attached to something else, leaving it")
    elif not system.remove_loop_device(index):
        log(f"{name}: {loop} stays busy, not removed (harmless: a free loop device)")


USAGE = f"""usage: {PROG} NORMAL_DIR [EARLY_DIR LATE_DIR]
       {PROG} --setup-device zramN
       {PROG} --reset-device zramN"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    root = os.environ.get("ZRAMFS_GENERATOR_ROOT")
    try:
        if len(argv) == 2 and argv[0] in ("--setup-device", "--reset-device"):
            name = argv[1].removeprefix("/dev/")
            if not genconf.is_device_name(name):
                raise SetupError(f"'{argv[1]}' is not a device name like zram0", EXIT_USAGE)
            if argv[0] == "--setup-device":
                setup_device(name, root or "/")
            else:
                reset_device(name)
            return EXIT_OK
        if 1 <= len(argv) <= 3 and not any(a.startswith("-") for a in argv):
            return generate(argv[0], root or "/", test_mode=root is not None)
    except SetupError as e:
        log(str(e))
        return e.code
    except OSError as e:
        log(f"error: {e}")
        return EXIT_FAILURE
    print(USAGE, file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
