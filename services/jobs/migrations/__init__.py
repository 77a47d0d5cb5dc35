"""Alembic migrations of the jobs database."""
