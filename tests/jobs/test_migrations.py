"""Jobs written before a migration read correctly after it."""

from datetime import timedelta

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, select, text

from magicpixels.core.db import create_engine, migrate
from magicpixels.core.timestamps import utcnow
from magicpixels.services.jobs import store
from tests.jobs.conftest import ACCOUNT, text_to_image
from tests.support import Database

MIGRATIONS = "magicpixels.services.jobs.migrations"
START = utcnow()


def upgrade_to(connection: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", f"{MIGRATIONS}:")
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def test_jobs_in_line_before_0003_are_numbered_in_the_order_they_were_queued(
    database: Database,
) -> None:
    before = [  # id, mode, state, queued `seconds` after START
        ("job_done", "text_to_image", "completed", 0),
        ("job_second", "text_to_image", "queued", 3),
        ("job_first", "text_to_image", "running", 1),
        ("job_third", "text_to_image", "queued", 4),
        ("job_audio", "text_to_audio", "queued", 2),
    ]
    engine = create_engine(database.url, schema=database.schema)
    try:
        async with engine.begin() as connection:
            if database.schema:
                await connection.execute(text(f'CREATE SCHEMA "{database.schema}"'))
            await connection.run_sync(upgrade_to, "0002")
            for job_id, mode, state, seconds in before:
                await connection.execute(
                    text(
                        "INSERT INTO jobs (id, account_id, livemode, mode, spec, state, progress,"
                        " cost_credits, attempts, lease_token, billing, created_at, queued_at,"
                        " updated_at) VALUES (:id, :account, true, :mode, '{}', :state, 0, 1, 0,"
                        " 0, 'held', :at, :at, :at)"
                    ),
                    {
                        "id": job_id,
                        "account": ACCOUNT,
                        "mode": mode,
                        "state": state,
                        "at": START + timedelta(seconds=seconds),
                    },
                )
        await migrate(engine, MIGRATIONS, schema=database.schema)
        jobs, queues = store.jobs.c, store.job_queues.c
        async with engine.connect() as connection:
            numbers = dict((await connection.execute(select(jobs.id, jobs.queue_seq))).all())
            last = dict((await connection.execute(select(queues.mode, queues.last_seq))).all())
        second = await store.get_job(engine, "job_second")
        new = await store.insert_pending(engine, ACCOUNT, True, text_to_image(), None, utcnow())
        assert second is not None
        assert new is not None
        position = await store.queue_position(engine, second)
        queued = await store.mark_queued(engine, new, 1, utcnow())
    finally:
        await engine.dispose()

    assert numbers == {
        "job_done": None,
        "job_first": 1,
        "job_second": 2,
        "job_third": 3,
        "job_audio": 1,
    }
    assert last == {
        "text_to_image": 3,
        "image_to_image": 0,
        "text_to_audio": 1,
        "image_to_video": 0,
    }
    assert position == 0
    assert queued is not None
    assert queued.job.queue_seq == 4
    assert queued.position == 2  # behind the second and the third
