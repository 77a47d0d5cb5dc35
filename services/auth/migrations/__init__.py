"""The auth database migrations."""
