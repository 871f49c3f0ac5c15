"""Pieces every command shares: checking input, running tools, claiming a name, the daemon's log.

Where this sits: under the command modules of `zramfs.cli`, over
`zramfs.system` (what is there) and `zramfs.launch` (starting a daemon).
"""

import errno
import fcntl
import importlib.util
import os
import subprocess
import sys

from zramfs import launch, system
from zramfs._pp_args import InvalidArgumentError, parse_recomp_algorithm
from zramfs.codecs import get_codec, parse_algorithm_params
from zramfs.config import (
    ConfigError,
    DeviceConfig,
    check_backing_dev,
    check_disksize,
    check_name,
    parse_size,
)
from zramfs.device import InvalidWatermarkError, check_watermarks
from zramfs.fuse import BACKENDS, UnknownBackendError, supports_discard

from ._errors import (
    BackendUnavailableError,
    CommandError,
    NameInUseError,
    NeedsRootError,
    RunDirError,
)


def human(size, *, long=False):
    """util-linux's size_to_human_string, as zramctl prints sizes ('4G', '248.7M', '63B'); long: '4 GiB'.

    Exactly its arithmetic: the fraction is cut to three digits, then
    rounded to one, and a fraction that rounds up to 1 carries into the
    integer part without changing the unit ('1024K').
    """
    exp = 0
    while exp < 60 and size >= 1 << (exp + 10):
        exp += 10
    dec, frac = (size >> exp, size & ((1 << exp) - 1)) if exp else (size, 0)
    if frac:
        frac = (frac * 1000) >> exp
        frac = (frac + 50) // 100
        if frac == 10:
            dec, frac = dec + 1, 0
    unit = "BKMGTPE"[exp // 10]
    text = f"{dec}.{frac}" if frac else str(dec)
    if long:
        return f"{text} {unit + 'iB' if exp else 'B'}"
    return text + unit


def run_tool(argv, what=None):
    """Run a system tool (in "/", with the clean environment); CommandError with its last stderr line if it fails."""
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd="/",
            env=launch.clean_env(),
        )
    except FileNotFoundError:
        raise CommandError(f"{argv[0]} not found (install util-linux)") from None
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        detail = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise CommandError(f"{what or ' '.join(argv)} failed: {detail}")
    return proc.stdout


# Why each command needs root, for its one-line error.  mount and umount
# do not: without root they go through fusermount3 (zramfs.fuse._mount).
_ROOT_REASONS = {
    "swapon": "it mounts, attaches a loop device and enables swap",
    "swapoff": "it disables swap, detaches a loop device and unmounts",
    "reset": "its device is attached to a loop device, which it detaches",
}


def need_root(command):
    if os.geteuid() != 0:
        raise NeedsRootError(f"{command} needs root ({_ROOT_REASONS[command]})")


def need_fuse(backend):
    if not os.path.exists("/dev/fuse"):
        raise BackendUnavailableError("/dev/fuse does not exist (is the fuse module loaded?)")
    if backend == "pyfuse3" and importlib.util.find_spec("pyfuse3") is None:
        raise BackendUnavailableError(
            "the pyfuse3 backend needs pyfuse3 (pip install 'zramfs[pyfuse3]')"
        )
    if backend not in BACKENDS:
        raise BackendUnavailableError(
            f"the {backend} FUSE backend is not available in this zramfs (available: {', '.join(BACKENDS)})"
        )


def backend_supports_discard(backend):
    """Whether the backend answers FUSE FALLOCATE, so discard frees memory (pyfuse3: no)."""
    try:
        return supports_discard(backend)
    except (ImportError, UnknownBackendError):
        return False


def check_algorithm(name):
    """The algorithm name if zramfs.codecs has it; else its UnknownAlgorithmError."""
    return get_codec(name).name


def disksize(text):
    return check_disksize(parse_size(text))


def mem_limit(text):
    """--mem-limit in bytes; 0 (zram's "no limit") when not given."""
    return 0 if text is None else parse_size(text)


def watermarks(args):
    """(--writeback-watermark, --writeback-low-watermark) in bytes, 0 when
    not given; ConfigError unless the low mark comes with a watermark above
    it, and the watermark with a --backing-dev."""
    high = 0 if args.writeback_watermark is None else parse_size(args.writeback_watermark)
    low = 0 if args.writeback_low_watermark is None else parse_size(args.writeback_low_watermark)
    if low and not high:
        raise ConfigError("--writeback-low-watermark needs --writeback-watermark")
    if high and args.backing_dev is None:
        raise ConfigError(
            "--writeback-watermark needs --backing-dev (where pages are written back)"
        )
    try:
        check_watermarks(high, low, "writeback_low_watermark")
    except InvalidWatermarkError:
        raise ConfigError(
            f"--writeback-low-watermark ({low} bytes) must be below "
            f"--writeback-watermark ({high} bytes)"
        ) from None
    return high, low


def device_config(args, *, size, mountpoint, name, sys_):
    """The DeviceConfig of a mount or swapon: its options (`check_options` first) and the claimed name."""
    high, low = watermarks(args)
    return DeviceConfig(
        mountpoint=mountpoint,
        size=size,
        algorithm=args.algorithm,
        algorithm_params=args.algorithm_params,
        mem_limit=mem_limit(args.mem_limit),
        name=name,
        fuse_backend=args.fuse_backend,
        run_dir=sys_.device_dir(name),
        backing_dev=backing_dev(args.backing_dev),
        recomp_algorithms=tuple(args.recomp_algorithms),
        writeback_watermark=high,
        writeback_low_watermark=low,
    )


def backing_dev(text):
    """--backing-dev as an absolute path, if config.check_backing_dev takes it; None when not given."""
    if text is None:
        return None
    if not text.strip():
        raise ConfigError("--backing-dev is empty")
    return check_backing_dev(os.path.abspath(text))


def check_recomp_algorithms(texts):
    """Each --recomp-algorithm as the recomp_algorithm file reads it, its
    codec and level known, and no priority given twice."""
    seen = {}
    for text in texts:
        try:
            name, priority, level = parse_recomp_algorithm(text)
        except InvalidArgumentError as e:
            raise ConfigError(f"--recomp-algorithm {text!r}: {e}") from None
        get_codec(name, level=level)  # UnknownAlgorithmError, InvalidCodecParamsError: exit 2
        if priority in seen:
            raise ConfigError(
                f"--recomp-algorithm: priority {priority} is given twice ({seen[priority]!r}, {text!r})"
            )
        seen[priority] = text


def check_options(args):
    """Check the device options mount and swapon share (--algorithm, --algorithm-params, --mem-limit,
    --backing-dev, --recomp-algorithm, a NAME given)."""
    check_algorithm(args.algorithm)
    # InvalidCodecParamsError: the message the algorithm_params file would give, exit 2.
    parse_algorithm_params(args.algorithm_params).resolve(args.algorithm)
    mem_limit(args.mem_limit)
    backing_dev(args.backing_dev)
    check_recomp_algorithms(args.recomp_algorithms)
    watermarks(args)
    if args.name is not None:
        check_name(args.name)


def mountpoint_arg(text):
    """MOUNTPOINT as an absolute path; an empty one is bad input (it would mean the working directory)."""
    if not text.strip():
        raise ConfigError("MOUNTPOINT is empty")
    return os.path.abspath(text)


class Undo:
    """What a command did so far, to undo in reverse order if a later step fails."""

    def __init__(self):
        self._steps = []

    def push(self, what, fn, *args, **kwargs):
        self._steps.append((what, fn, args, kwargs))

    def run(self):
        """Undo everything, keep going past failures; print one warning per step that failed."""
        while self._steps:
            what, fn, args, kwargs = self._steps.pop()
            try:
                fn(*args, **kwargs)
            except Exception as e:  # keep undoing the rest
                print(f"zramfs: warning: could not undo: {what}: {e}", file=sys.stderr)


def rmdir_if_empty(path):
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
            raise


def forget(sys_, name):
    """Remove device `name`'s directory if it is left over (no command or daemon holds it)."""
    if sys_.is_stale(name):
        system.remove_device_dir(sys_.path(sys_.device_dir(name)))


def _make_run_dir(path):
    """Make the run directory if needed; refuse one that another user controls."""
    private = os.geteuid() != 0
    try:
        os.makedirs(path, mode=0o700 if private else 0o755, exist_ok=True)
        st = os.lstat(path)
    except OSError as e:
        raise RunDirError(f"cannot make the run directory {path}: {e.strerror}") from None
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.geteuid():
        raise RunDirError(
            f"the run directory {path} is not a directory owned by uid {os.geteuid()}"
        )
    if private and st.st_mode & 0o077:
        raise RunDirError(
            f"the run directory {path} is open to other users (mode {st.st_mode & 0o777:o})"
        )


def claim(sys_, name, undo):
    """Claim device `name` (None: the first free zramN); returns (name, fd of its locked directory).

    Choosing and claiming happen under an exclusive lock on the run
    directory, so two commands at once never pick one name.  The device's
    directory is made and locked (see zramfs.system); the fd is passed on to
    the daemon, which holds the claim from then on.  Undoing the claim
    (pushed on `undo`) closes the fd and removes the directory, and the run
    directory if it was made for it and is empty.
    """
    base = sys_.path(sys_.run_dir)
    while True:
        existed = os.path.isdir(base)
        _make_run_dir(base)
        if not existed:
            undo.push("remove " + base, rmdir_if_empty, base)
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(base).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                continue  # the last swapoff removed the run directory meanwhile
            if name is None:
                n = 0
                while sys_.name_taken(f"zram{n}") is not None:
                    n += 1
                name = f"zram{n}"
            else:
                reason = sys_.name_taken(name)
                if reason:
                    raise NameInUseError(reason)
            path = sys_.path(sys_.device_dir(name))
            if os.path.isdir(path):
                system.remove_device_dir(path)  # left over: name_taken found nobody holding it
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                raise NameInUseError(
                    f"name {name!r} is in use ({path} is left over with files zramfs did not write)"
                ) from None
            undo.push("remove " + path, system.remove_device_dir, path)
            held = system.lock_device_dir(path)  # new, so nobody else holds it
            undo.push("release " + path, os.close, held)
            return name, held
        finally:
            os.close(fd)


def daemon_log(sys_, name):
    """Where device `name`'s daemon logs: the journal when we are under systemd, else its log file.

    Returns what `subprocess.Popen` takes as stderr (None: inherit ours); a
    file it returns is the caller's to close.
    """
    stream = os.environ.get("JOURNAL_STREAM")
    if stream:
        try:
            st = os.fstat(sys.stderr.fileno())
            if stream == f"{st.st_dev}:{st.st_ino}":
                return None
        except (OSError, ValueError, AttributeError):
            pass
    path = sys_.path(os.path.join(sys_.device_dir(name), system.LOG))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "a")


def start_daemon(sys_, config, held):
    """Start the daemon for `config` in the background, logging to `daemon_log`; its pid once READY.

    `held` is the claim's fd (see `claim`): the daemon inherits it.
    """
    log = daemon_log(sys_, config.name)
    try:
        return launch.start(config, stderr=log, keep_fds=(held,))
    finally:
        if log is not None:
            log.close()
