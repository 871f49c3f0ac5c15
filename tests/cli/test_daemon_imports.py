"""What `zramfs.daemon` imports: everything it loads stays locked for the daemon's life.

The running daemon is checked in tests/system/test_idle_memory.py; this is
the same rule at import, without root, in a fresh interpreter started as
`zramfs.launch` starts the daemon (``python -I``).
"""

import subprocess
import sys

# Modules a default daemon (lz4, dev backend) never uses, and who needs them.
NOT_IMPORTED = {
    "trio": "the pyfuse3 backend only; with it ssl, attrs, idna, sortedcontainers",
    "zstandard": "the zstd codec",
    "lzo": "the lzo codec",
    "decimal": "N% sizes (zramfs.config.parse_size)",
    "subprocess": "fusermount3, without root; genconf's set! directives; zramfs.launch",
    "ctypes.util": "nothing: it ran ldconfig to find libc",
}


def test_the_daemon_imports_no_module_it_does_not_use():
    code = "import sys, zramfs.daemon; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    imported = set(out.stdout.split())
    assert {m: why for m, why in NOT_IMPORTED.items() if m in imported} == {}
