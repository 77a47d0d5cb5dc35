"""The ledger under random sequences of operations, on both databases.

A hypothesis state machine drives the real servicer and store: grants, reserves (live and test
mode), replays of a reserve, replays with another request, whole and partial captures,
captures of more than was held, releases, and time passing beyond every hold's timeout so the
sweep expires them. It keeps a model of what each account and hold should be; after every step
the database's books must agree with each other (balances equal the sum of their entries, one
entry per resolution, nothing negative) and with the model.
"""

import asyncio
import itertools
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import grpc
import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from magicpixels.billing.v1 import billing_pb2
from magicpixels.core.db import create_engine, migrate
from magicpixels.core.errors import DomainError
from magicpixels.core.timestamps import utcnow
from magicpixels.services.billing import domain
from magicpixels.services.billing.domain import HoldState
from magicpixels.services.billing.payments import OperatorPayments
from magicpixels.services.billing.server import MIGRATIONS, BillingServicer
from magicpixels.services.billing.store import BillingStore
from magicpixels.services.billing.subscriptions import Subscriptions
from tests.billing.conftest import PLANS, Books
from tests.support import Database

HOLD_TIMEOUT = timedelta(hours=1)
ACCOUNTS = st.sampled_from(["ada", "bob"])
MODES = st.sampled_from(["text_to_image", "image_to_image", "audio", "image_to_video"])
DURATIONS = st.sampled_from([0.5, 1, 2.5, 10, 25])
NO_CONTEXT = cast(grpc.aio.ServicerContext, None)
# Bounded so that both databases' runs stay within seconds. A failing example is reported as
# found: shrinking it, through a database, can outlast the test's timeout.
BOUNDED = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
)


@dataclass
class ModelHold:
    account: str
    usage: billing_pb2.Usage
    livemode: bool
    amount: int
    state: HoldState = HoldState.HELD
    captured: int = 0


class LedgerMachine(RuleBasedStateMachine):
    references = Bundle("references")

    def __init__(self, runner: asyncio.Runner, store: BillingStore) -> None:
        super().__init__()
        self.runner = runner
        self.store = store
        self.books = Books(store.engine)
        payments = OperatorPayments(auto_approve=False)
        self.servicer = BillingServicer(store, Subscriptions(store, PLANS, payments), HOLD_TIMEOUT)
        # Each example has accounts and references of its own in the shared database.
        self.prefix = secrets.token_hex(4)
        self.numbers = itertools.count()
        self.available = {"ada": 0, "bob": 0}
        self.reserved = {"ada": 0, "bob": 0}
        self.holds: dict[str, ModelHold] = {}

    def account_id(self, account: str) -> str:
        return f"acct_{self.prefix}_{account}"

    def call(self, rpc: str, request: Any) -> Any:
        return self.runner.run(getattr(self.servicer, rpc)(request, NO_CONTEXT))

    def refusal(self, rpc: str, request: Any) -> DomainError:
        with pytest.raises(DomainError) as caught:
            self.call(rpc, request)
        return caught.value

    def reserve_request(self, reference: str, hold: ModelHold) -> billing_pb2.ReserveRequest:
        return billing_pb2.ReserveRequest(
            account_id=self.account_id(hold.account),
            reference=reference,
            usage=hold.usage,
            livemode=hold.livemode,
        )

    def give_back(self, hold: ModelHold, state: HoldState, captured: int = 0) -> None:
        if hold.livemode:
            self.available[hold.account] += hold.amount - captured
            self.reserved[hold.account] -= hold.amount
        hold.state, hold.captured = state, captured

    @rule(account=ACCOUNTS, amount=st.integers(1, 100))
    def grant(self, account: str, amount: int) -> None:
        request = billing_pb2.GrantRequest(
            account_id=self.account_id(account), amount=amount, description="top-up"
        )
        entry = self.call("Grant", request)
        self.available[account] += amount
        assert entry.balance_after == self.available[account]

    @rule(
        target=references,
        account=ACCOUNTS,
        mode=MODES,
        duration=DURATIONS,
        livemode=st.booleans(),
    )
    def reserve(self, account: str, mode: str, duration: float, livemode: bool) -> Any:
        reference = f"job_{self.prefix}_{next(self.numbers)}"
        cost = domain.cost(mode, duration, livemode=livemode)
        usage = billing_pb2.Usage(mode=mode, duration_seconds=duration)
        hold = ModelHold(account, usage, livemode, cost)
        if cost > self.available[account]:
            refused = self.refusal("Reserve", self.reserve_request(reference, hold))
            assert refused.reason == "INSUFFICIENT_CREDITS"
            return multiple()
        made = self.call("Reserve", self.reserve_request(reference, hold))
        assert (made.amount, made.state) == (cost, billing_pb2.HOLD_STATE_HELD)
        if livemode:
            self.available[account] -= cost
            self.reserved[account] += cost
        self.holds[reference] = hold
        return reference

    @rule(reference=references)
    def replay_reserve(self, reference: str) -> None:
        hold = self.holds[reference]
        answered = self.call("Reserve", self.reserve_request(reference, hold))
        assert (answered.amount, answered.captured_amount) == (hold.amount, hold.captured)

    @rule(reference=references)
    def reserve_again_in_the_other_mode(self, reference: str) -> None:
        hold = self.holds[reference]
        other = ModelHold(hold.account, hold.usage, not hold.livemode, hold.amount)
        refused = self.refusal("Reserve", self.reserve_request(reference, other))
        assert refused.reason == "HOLD_REFERENCE_CONFLICT"

    @rule(reference=references, data=st.data())
    def capture(self, reference: str, data: st.DataObject) -> None:
        hold = self.holds[reference]
        amount = data.draw(st.none() | st.integers(0, hold.amount))
        request = billing_pb2.CaptureRequest(reference=reference, amount=amount)
        if hold.state in (HoldState.RELEASED, HoldState.EXPIRED):
            assert self.refusal("Capture", request).reason == "HOLD_ALREADY_RESOLVED"
            return
        answered = self.call("Capture", request)
        if hold.state is HoldState.HELD:
            self.give_back(hold, HoldState.CAPTURED, hold.amount if amount is None else amount)
        assert (answered.state, answered.captured_amount) == (
            billing_pb2.HOLD_STATE_CAPTURED,
            hold.captured,
        )

    @rule(reference=references)
    def capture_more_than_held(self, reference: str) -> None:
        hold = self.holds[reference]
        if hold.state is HoldState.HELD:
            request = billing_pb2.CaptureRequest(reference=reference, amount=hold.amount + 1)
            assert self.refusal("Capture", request).reason == "PARAMETER_INVALID"

    @rule(reference=references)
    def release(self, reference: str) -> None:
        hold = self.holds[reference]
        request = billing_pb2.ReleaseRequest(reference=reference)
        if hold.state is HoldState.CAPTURED:
            assert self.refusal("Release", request).reason == "HOLD_ALREADY_RESOLVED"
            return
        answered = self.call("Release", request)
        if hold.state is HoldState.HELD:
            self.give_back(hold, HoldState.RELEASED)
        assert answered.state == billing_pb2.HoldState.Value(f"HOLD_STATE_{hold.state.name}")

    @rule()
    def time_passes_beyond_every_timeout(self) -> None:
        self.runner.run(self.store.expire_holds(utcnow() + HOLD_TIMEOUT))
        for hold in self.holds.values():
            if hold.state is HoldState.HELD:
                self.give_back(hold, HoldState.EXPIRED)

    @invariant()
    def the_books_agree_with_each_other_and_the_model(self) -> None:
        account_ids = {self.account_id(account): account for account in self.available}
        self.runner.run(self.books.check(account_ids))
        for account_id, account in account_ids.items():
            balance = self.runner.run(self.store.get_balance(account_id))
            assert (balance.available, balance.reserved) == (
                self.available[account],
                self.reserved[account],
            )
            assert balance.available >= 0
        for reference, hold in self.holds.items():
            stored = self.runner.run(self.store.get_hold(reference))
            assert (stored.state, stored.captured_amount) == (hold.state, hold.captured)


def test_the_books_hold_through_random_operations(database: Database) -> None:
    with asyncio.Runner() as runner:
        engine = create_engine(database.url, schema=database.schema)
        try:
            runner.run(migrate(engine, MIGRATIONS, schema=database.schema))
            store = BillingStore(engine)
            run_state_machine_as_test(lambda: LedgerMachine(runner, store), settings=BOUNDED)
        finally:
            runner.run(engine.dispose())
