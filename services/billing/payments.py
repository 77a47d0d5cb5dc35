"""How a subscription's periods are paid: a provider behind one interface.

A provider is asked for the payment of a period and answers PAID (the period starts now) or
PENDING (the subscription waits until ApproveSubscription confirms the payment: an operator's
command, or a provider's own callback). A request may be repeated after a race or a crash: a
provider that really charges keys its charge by the subscription, the plan and the period, so
that it charges once.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from magicpixels.services.billing.domain import Plan, Subscription


class PaymentOutcome(StrEnum):
    PAID = "paid"
    PENDING = "pending"


@dataclass(frozen=True)
class PaymentRequest:
    subscription: Subscription
    plan: Plan
    # A renewal pays the next period of a subscription already paid for.
    renewal: bool


class PaymentProvider(Protocol):
    async def request_payment(self, request: PaymentRequest) -> PaymentOutcome: ...


class OperatorPayments:
    """The built-in provider: the operator is paid outside the platform and approves a new
    subscription, or a change of plan, with `magicpixels admin approve-subscription`. An
    approved subscription renews each period until it is canceled. `auto_approve` approves
    every request at once, for development."""

    def __init__(self, *, auto_approve: bool) -> None:
        self._auto_approve = auto_approve

    async def request_payment(self, request: PaymentRequest) -> PaymentOutcome:
        if self._auto_approve or request.renewal:
            return PaymentOutcome.PAID
        return PaymentOutcome.PENDING
