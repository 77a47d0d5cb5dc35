"""Data written before a migration reads correctly after it."""

from datetime import UTC, datetime, timedelta

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, insert, text

from magicpixels.core.db import create_engine, migrate
from magicpixels.services.billing.domain import HoldState, Subscription, SubscriptionStatus
from magicpixels.services.billing.server import MIGRATIONS
from magicpixels.services.billing.store import BillingStore, subscriptions
from tests.support import Database

START = datetime(2026, 11, 1, tzinfo=UTC)


def upgrade_to(connection: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", f"{MIGRATIONS}:")
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def test_subscriptions_and_holds_from_before_0002_read_as_active_and_modeless(
    database: Database,
) -> None:
    engine = create_engine(database.url, schema=database.schema)
    try:
        async with engine.begin() as connection:
            if database.schema:
                await connection.execute(text(f'CREATE SCHEMA "{database.schema}"'))
            await connection.run_sync(upgrade_to, "0001")
            await connection.execute(
                insert(subscriptions).values(
                    account_id="acct_1",
                    plan_id="starter",
                    current_period_start=START,
                    current_period_end=START + timedelta(days=30),
                )
            )
            await connection.execute(
                text(
                    "INSERT INTO holds (reference, account_id, amount, captured_amount, state,"
                    " livemode, created_at, expires_at) VALUES ('job_1', 'acct_1', 1, 0, 'held',"
                    " true, :start, :start)"
                ),
                {"start": START},
            )
        await migrate(engine, MIGRATIONS, schema=database.schema)
        store = BillingStore(engine)
        subscription = await store.find_subscription("acct_1")
        hold = await store.get_hold("job_1")
    finally:
        await engine.dispose()

    assert subscription == Subscription(
        "sub_acct_1",
        "acct_1",
        "starter",
        SubscriptionStatus.ACTIVE,
        START,
        START + timedelta(days=30),
        False,
        START,
    )
    assert (hold.mode, hold.state, hold.amount) == ("", HoldState.HELD, 1)
