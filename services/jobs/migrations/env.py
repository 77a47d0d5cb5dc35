from magicpixels.core.db import run_migrations
from magicpixels.services.jobs.store import metadata

run_migrations(metadata, service="jobs")
