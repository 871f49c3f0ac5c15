"""``zramfs swapoff NAME|--all``: take down what swapon set up, and nothing else.

The swapoff that leaves no zramfs swap behind also puts back the system
settings swapon changed (`zramfs.tuning`) and removes the run directory if
nothing else is in it.
"""

from zramfs import tuning
from zramfs.config import ConfigError, check_name
from zramfs.system import System

from ._common import need_root, rmdir_if_empty
from ._errors import EXIT_OK, exit_code_for
from ._teardown import UNMOUNT_BUSY_TIMEOUT, execute, plan_swapoff


def swapoff_one(sys_, name):
    """Take down swapon's device `name`; each step only if its part is still there."""
    execute(sys_, plan_swapoff(sys_, name), busy_timeout=UNMOUNT_BUSY_TIMEOUT)
    after_swap_teardown(sys_)


def after_swap_teardown(sys_):
    """Once no zramfs swap is left: put back swapon's system settings, remove an empty run directory."""
    if not sys_.swap_names():
        # The last zramfs swap is gone: the machine's own settings come
        # back, and the run directory goes if nothing else is in it.
        tuning.restore(sys_.path(sys_.run_dir))
        rmdir_if_empty(sys_.path(sys_.run_dir))


def cmd_swapoff(args, report):
    """Swapoff, losetup -d, unmount, wait for the daemon, remove the directories."""
    if args.all and args.name is not None:
        raise ConfigError("give a NAME or --all, not both")
    if not args.all and args.name is None:
        raise ConfigError("give a NAME or --all")
    if args.name is not None:
        check_name(args.name)
    need_root("swapoff")
    sys_ = System()
    if not args.all:
        swapoff_one(sys_, args.name)
        return EXIT_OK
    first = None
    for name in sys_.swap_names():
        try:
            swapoff_one(sys_, name)
        except Exception as e:
            code = exit_code_for(e)
            if code is None:
                raise
            report(e)  # and carry on with the others
            first = first or code
    return first or EXIT_OK
