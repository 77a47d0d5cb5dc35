"""Revisions of the assets database."""
