"""The Python client of the MagicPixels API: `MagicPixels` (sync) and `AsyncMagicPixels`."""

__version__ = "0.1.0"

from magicpixels_sdk.client import AsyncMagicPixels, MagicPixels
from magicpixels_sdk.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BillingError,
    ConflictError,
    InvalidRequestError,
    JobFailedError,
    MagicPixelsError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    WaitTimeoutError,
    WebhookVerificationError,
)
from magicpixels_sdk.models import (
    MODES,
    Account,
    Asset,
    Credits,
    Job,
    JobError,
    JobEvent,
    JobResult,
    SignedUrl,
)
from magicpixels_sdk.webhooks import verify_webhook

__all__ = [
    "MODES",
    "APIConnectionError",
    "APIError",
    "Account",
    "Asset",
    "AsyncMagicPixels",
    "AuthenticationError",
    "BillingError",
    "ConflictError",
    "Credits",
    "InvalidRequestError",
    "Job",
    "JobError",
    "JobEvent",
    "JobFailedError",
    "JobResult",
    "MagicPixels",
    "MagicPixelsError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "SignedUrl",
    "WaitTimeoutError",
    "WebhookVerificationError",
    "verify_webhook",
]
