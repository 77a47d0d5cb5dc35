from magicpixels.core.db import run_migrations
from magicpixels.services.auth.store import metadata

run_migrations(metadata, service="auth")
