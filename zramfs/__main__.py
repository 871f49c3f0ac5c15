"""``python -m zramfs``: the same as the ``zramfs`` command (zramfs.cli.main)."""

import sys

from zramfs.cli import main

if __name__ == "__main__":
    sys.exit(main())
