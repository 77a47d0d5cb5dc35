"""A funded account on a running mesh, and SDK clients of its key."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from magicpixels import cli
from magicpixels.mesh import RunningMesh
from magicpixels_sdk import AsyncMagicPixels
from tests.gateway.conftest import client, running_mesh, sign_up

__all__ = ["client", "running_mesh"]  # the gateway tests' fixtures, used here too


@dataclass(frozen=True)
class Account:
    id: str
    token: str
    base_url: str
    data_dir: str


async def grant(account: Account, credits: int) -> None:
    args = ["admin", "grant-credits", account.id, str(credits), "--data-dir", account.data_dir]
    await asyncio.to_thread(cli.main, args)


@pytest.fixture
async def account(client: httpx.AsyncClient, running_mesh: RunningMesh) -> Account:
    """A new account with 100 credits."""
    account_id, token = await sign_up(client)
    found = Account(
        account_id, token, str(client.base_url), str(running_mesh.mesh.settings.data_dir)
    )
    await grant(found, 100)
    return found


@pytest.fixture
async def sdk(account: Account) -> AsyncIterator[AsyncMagicPixels]:
    async with AsyncMagicPixels(account.token, base_url=account.base_url) as client:
        yield client
