"""The jobs service."""
