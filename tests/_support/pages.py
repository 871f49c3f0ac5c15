"""Pages of each kind a device stores, made from a seed so a test can make them again.

Where this sits: test data only.  The device tier (tests/device) writes
them through BlockDevice and checks what comes back.
"""

import random

from allocator import PAGE_SIZE


def obj_page(seed):
    """40 % random bytes then zeros: lz4 makes an ordinary pool object of it (~40 %)."""
    head = random.Random(seed).randbytes(PAGE_SIZE * 4 // 10)
    return head + bytes(PAGE_SIZE - len(head))


def huge_page(seed):
    """Random bytes: no codec brings them under huge_class_size, so a huge page."""
    return random.Random(seed).randbytes(PAGE_SIZE)
