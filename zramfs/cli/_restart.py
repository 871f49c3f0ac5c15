"""``zramfs restart NAME``: replace a device's daemon with the code installed now, keeping every page.

Where this sits: a command over `zramfs.system` (which supervisor serves
NAME) and `zramfs.supervisor` (its socket).  Nothing is swapped off or
unmounted: the supervisor asks the new code whether it can read the
device's state (``zramfs.daemon --check-state``), and only then tells the
old daemon to stop at a safe point and starts the new one, which resumes
the state and has the kernel resend what was in flight.  Users of the
device see a pause.

Refused, with the old daemon still serving: when the state format changed
incompatibly (exit 7), when the device has no supervisor (the pyfuse3
backend, or its supervisor was killed) or the kernel cannot resend FUSE
requests (exit 1).  A ``mount --foreground`` is its own supervisor, and
restarts like any other.
"""

from zramfs.config import check_name
from zramfs.launch import control_path
from zramfs.supervisor import request_restart
from zramfs.system import System, start_time

from ._errors import EXIT_OK, DaemonError, DeviceNotFoundError, RestartRefusedError


def cmd_restart(args):
    """Ask NAME's supervisor for a new daemon; print its pid once it serves."""
    name = check_name(args.name)
    pid, restarts = restart(System(), name)
    print(f"{name}: restarted, daemon pid {pid}" + (f" (restart {restarts})" if restarts else ""))
    return EXIT_OK


def restart(sys_, name):
    """Have device `name`'s supervisor start the code installed now; (new daemon pid, restarts so far).

    DeviceNotFoundError if no live device has that name; DaemonError if it
    has no live supervisor or the restart fails; RestartRefusedError if the
    new code cannot read the state (the old daemon serves on).
    """
    record = sys_.daemon_record(name)
    if record is None or not sys_.daemon_alive(record):
        raise DeviceNotFoundError(f"no running zramfs device named {name!r}")
    if not record.supervised:
        raise DaemonError(
            f"{name!r} runs without a supervisor (the {record.config.fuse_backend} backend): "
            "it cannot be restarted without losing its data"
        )
    if start_time(record.pid, sys_.root) != record.start_time:
        raise DaemonError(
            f"the supervisor of {name!r} (pid {record.pid}) is gone: "
            "its daemon serves on, but cannot be restarted without losing its data"
        )
    try:
        answer = request_restart(control_path(sys_.path(record.config.run_dir)))
    except OSError as e:
        raise DaemonError(f"cannot reach the supervisor of {name!r}: {e.strerror or e}") from None
    word, _, detail = answer.partition(" ")
    if word == "REFUSED":
        raise RestartRefusedError(f"{name}: not restarted, the old daemon serves on: {detail}")
    if word != "OK":
        raise DaemonError(f"{name}: not restarted: {detail}")
    new = sys_.daemon_record(name)
    return int(detail), (new.restarts if new is not None else 0)
