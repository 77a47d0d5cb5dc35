"""Alembic migrations of the assets database."""
