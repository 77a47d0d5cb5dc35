"""The SDK's webhook verifier against the jobs service's own signer, and against real
deliveries from a running mesh."""

import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from magicpixels.mesh import RunningMesh
from magicpixels.services.jobs.domain import webhook_signature
from magicpixels_sdk import AsyncMagicPixels, WebhookVerificationError, verify_webhook
from tests.jobs.test_webhooks import Receiver
from tests.sdk.conftest import Account, grant
from tests.support import eventually

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_c2VjcmV0LW9mLWxhc3QteWVhcg=="
BODY = json.dumps({"type": "job.completed", "data": {"id": "job_1"}}).encode()


def signed(secrets: list[str], timestamp: int, body: bytes = BODY) -> dict[str, str]:
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhook_signature(secrets, "msg_1", timestamp, body),
    }


def test_what_the_server_signs_verifies_with_either_secret_of_a_rotation() -> None:
    now = int(time.time())
    assert verify_webhook(BODY, signed([SECRET], now), SECRET)["data"] == {"id": "job_1"}
    rotating = signed([SECRET, OLD_SECRET], now)
    assert verify_webhook(BODY, rotating, OLD_SECRET)["type"] == "job.completed"
    upper = {name.upper(): value for name, value in rotating.items()}
    assert verify_webhook(BODY.decode(), upper, SECRET)["type"] == "job.completed"


@pytest.mark.parametrize(
    ("body", "age", "secret"),
    [
        (BODY + b" ", 0, SECRET),  # tampered
        (BODY, 0, OLD_SECRET),  # another secret
        (BODY, 301, SECRET),  # too old: perhaps a replay
        (BODY, -301, SECRET),  # from the future
    ],
)
def test_anything_else_is_refused(body: bytes, age: int, secret: str) -> None:
    headers = signed([SECRET], int(time.time()) - age)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, secret)


def test_missing_headers_and_bad_secrets_are_refused() -> None:
    headers = signed([SECRET], int(time.time()))
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, {**headers, "webhook-signature": ""}, SECRET)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, headers, "whsec_not base64!")


@pytest.fixture
def loopback_webhooks_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator lets webhooks reach this machine, where the test's receiver listens."""
    monkeypatch.setenv("MP_JOBS_WEBHOOK_ALLOWED_HOSTS", '["127.0.0.1"]')


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver().listening() as listening:
        yield listening


async def test_real_deliveries_verify(
    loopback_webhooks_allowed: None,
    client: httpx.AsyncClient,
    running_mesh: RunningMesh,
    receiver: Receiver,
) -> None:
    signed_up = (await client.post("/v1/accounts", json={"email": "eve@example.com"})).json()
    account = Account(
        signed_up["account"]["id"],
        signed_up["api_key"]["token"],
        str(client.base_url),
        str(running_mesh.mesh.settings.data_dir),
    )
    await grant(account, 5)
    async with AsyncMagicPixels(account.token, base_url=account.base_url) as sdk:
        job = await sdk.jobs.create(
            "text_to_image", "a bell", width=64, height=64, webhook_url=receiver.url()
        )

    async def both_arrived() -> bool:
        return len(receiver.requests) >= 2

    await eventually(both_arrived)
    events = [
        verify_webhook(request.body, request.headers, signed_up["webhook_secret"])
        for request in receiver.requests
    ]
    assert [event["type"] for event in events] == ["job.running", "job.completed"]
    assert events[1]["data"]["id"] == job.id
    # The result URL names the gateway as it was started (on a free port here), and opens.
    result = await client.get(events[1]["data"]["result"]["url"])
    assert (result.status_code, result.headers["content-type"]) == (200, "image/png")
