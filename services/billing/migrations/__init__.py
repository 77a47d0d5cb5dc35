"""The billing database migrations."""
