from magicpixels.core.db import run_migrations
from magicpixels.services.assets.store import metadata

run_migrations(metadata, service="assets")
