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
    DEADLINE_EXCEEDED,
    MODES,
    Account,
    Asset,
    Credits,
    Job,
    JobError,
    JobEvent,
    JobResult,
    Quote,
    SignedUrl,
)
from magicpixels_sdk.webhooks import verify_webhook

__all__ = [
    "DEADLINE_EXCEEDED",
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
    "Quote",
    "RateLimitError",
    "ServerError",
    "SignedUrl",
    "WaitTimeoutError",
    "WebhookVerificationError",
    "verify_webhook",
]
