"""The fuse tier."""
