from magicpixels.core.db import run_migrations
from magicpixels.services.billing.store import metadata

run_migrations(metadata, service="billing")
