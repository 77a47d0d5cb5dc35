"""The auth schema revisions."""
