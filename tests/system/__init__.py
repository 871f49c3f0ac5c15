"""The system tier."""
