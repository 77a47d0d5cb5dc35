"""Subscriptions: subscribing, approving, canceling, and the sweep that renews periods.

Every change reads the account's subscription, decides the next one by the rules of domain.py,
asks the payment provider when a period must be paid, and writes it, with the credits of a
period it starts, only if the subscription is still the one read. A change that lost a race
starts over from what is there now; a renewal that lost one is left to the winner. So the
sweep may run in several processes at once and still renews and refills each period once.
"""

from collections.abc import Awaitable, Callable
from datetime import datetime

from magicpixels.core.timestamps import utcnow
from magicpixels.services.billing import domain
from magicpixels.services.billing.domain import (
    Movement,
    Plan,
    PlanCatalog,
    Subscription,
    SubscriptionStatus,
)
from magicpixels.services.billing.payments import (
    PaymentOutcome,
    PaymentProvider,
    PaymentRequest,
)
from magicpixels.services.billing.store import BillingStore

Decision = Callable[[Subscription | None, datetime], Awaitable[Subscription]]


class Subscriptions:
    def __init__(self, store: BillingStore, plans: PlanCatalog, payments: PaymentProvider) -> None:
        self.plans = plans
        self._store = store
        self._payments = payments

    async def get(self, account_id: str) -> Subscription:
        return domain.existing(await self._store.find_subscription(account_id))

    async def subscribe(self, account_id: str, plan: Plan) -> Subscription:
        async def decide(current: Subscription | None, now: datetime) -> Subscription:
            if current is not None and domain.is_subscribed(current, plan):
                return domain.resumed(current)
            draft = domain.requested(current, account_id, plan, now)
            if domain.needs_payment(plan) and not await self._paid(draft, plan, renewal=False):
                return draft
            return domain.started(draft, plan, now)

        return await self._change(account_id, decide)

    async def approve(self, account_id: str) -> Subscription:
        async def decide(current: Subscription | None, now: datetime) -> Subscription:
            found = domain.approvable(current)
            if found.status is SubscriptionStatus.ACTIVE:
                return found
            return domain.started(found, self.plans.get(found.plan_id), now)

        return await self._change(account_id, decide)

    async def cancel(self, account_id: str) -> Subscription:
        async def decide(current: Subscription | None, now: datetime) -> Subscription:
            return domain.canceled(domain.existing(current), now)

        return await self._change(account_id, decide)

    async def renew_due(self, now: datetime) -> list[Subscription]:
        """Renews, or ends, every subscription whose period is over; answers what it wrote."""
        renewed = []
        for due in await self._store.due_subscriptions(now):
            after = await self._renewal(due, now)
            if await self._store.save_subscription(after, due, self._refill(due, after), now):
                renewed.append(after)
        return renewed

    async def _renewal(self, due: Subscription, now: datetime) -> Subscription:
        plan = self.plans.find(due.plan_id)
        if due.cancel_at_period_end or plan is None:
            return domain.ended(due)
        if await self._paid(due, plan, renewal=True):
            return domain.renewed(due, plan, now)
        return domain.unpaid(due)

    async def _paid(self, subscription: Subscription, plan: Plan, *, renewal: bool) -> bool:
        request = PaymentRequest(subscription, plan, renewal=renewal)
        return await self._payments.request_payment(request) is PaymentOutcome.PAID

    async def _change(self, account_id: str, decide: Decision) -> Subscription:
        """Applies the decision to the subscription as it is; again after a concurrent change,
        which only ever means that another writer succeeded."""
        while True:
            now = utcnow()
            current = await self._store.find_subscription(account_id)
            after = await decide(current, now)
            if after == current:
                return after
            if await self._store.save_subscription(
                after, current, self._refill(current, after), now
            ):
                return after

    def _refill(self, before: Subscription | None, after: Subscription) -> Movement | None:
        if not domain.starts_period(before, after):
            return None
        return domain.refill_movement(after, self.plans.get(after.plan_id))
