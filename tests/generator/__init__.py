"""The generator tier."""
