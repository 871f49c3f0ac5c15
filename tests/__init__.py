"""zramfs test suite: one folder per tier, shared helpers in _support."""
