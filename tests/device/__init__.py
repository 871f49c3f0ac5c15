"""The device tier."""
