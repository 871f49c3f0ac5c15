"""The allocator tier."""
