"""The assets service."""
