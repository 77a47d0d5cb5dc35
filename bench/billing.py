"""Reserve + capture pairs per second through the real BillingService over gRPC.

Runs `magicpixels serve billing` as its own process on PostgreSQL (a fresh schema) and on
SQLite (a fresh file) and drives pairs of Reserve(1 credit) + Capture from this process:

- sequential: one caller, one account;
- N callers, N accounts: the usual load, many accounts paying for jobs at once;
- N callers, 1 account: every pair contends for one balance row, whose lock each
  statement holds until its commit is durable, so this measures commits in a row.

The concurrent runs are made twice: one gRPC call per Reserve or Capture, and through the
client the jobs service calls billing with (core/holds.py), which sends the calls made while
one is on its way in one BatchReserve or BatchCapture.

On PostgreSQL, billing's tables are analyzed before each run, as a deployment's autovacuum
keeps them (`statistics_kept`).

Each run prints pairs per second and the CPU time spent per pair (steadier than throughput on a
busy machine) by the callers (this process), by the billing process and, on PostgreSQL, by the
backends of its connections.
After each database's runs it reads every account's ledger back over gRPC and checks that each
pair left exactly one HOLD and one CAPTURE entry, that the entries sum to the balance and that
nothing is still reserved: zero lost or duplicated entries.

    .venv/bin/python bench/billing.py [--pairs 4000] [--callers 32] [--only postgres|sqlite]
"""

import argparse
import asyncio
import itertools
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import asyncpg
import psutil
from sqlalchemy.engine import make_url

from magicpixels.billing.v1 import billing_pb2, billing_pb2_grpc
from magicpixels.core import eventloop
from magicpixels.core.clients import open_channel
from magicpixels.core.holds import Holds
from magicpixels.core.settings import MeshSettings

POSTGRES_URL = os.environ.get(
    "MP_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
USAGE = billing_pb2.Usage(mode="text_to_image")
WARM_UP_PAIRS = 200
PAIR_KINDS = (billing_pb2.LEDGER_ENTRY_KIND_HOLD, billing_pb2.LEDGER_ENTRY_KIND_CAPTURE)


@contextmanager
def billing_process(data_dir: Path, database: dict[str, str]) -> Iterator[tuple[str, "Server"]]:
    """Runs the billing service on its own; yields its address, once it listens, and it."""
    env = {**os.environ, "MP_DATA_DIR": str(data_dir), "MP_LOG_LEVEL": "warning", **database}
    command = [sys.executable, "-m", "magicpixels.cli", "serve", "billing"]
    process = subprocess.Popen(command, env=env)
    marker = data_dir / "run" / "billing.address"
    try:
        for _ in range(600):
            if marker.exists():
                break
            if process.poll() is not None:
                raise SystemExit(f"billing exited with {process.returncode}")
            time.sleep(0.05)
        else:
            raise SystemExit("billing did not start")
        yield marker.read_text().strip(), Server(psutil.Process(process.pid))
    finally:
        process.terminate()
        process.wait(timeout=15)


class Bench:
    """Makes pairs and remembers, per account, the references it made."""

    def __init__(
        self, stub: billing_pb2_grpc.BillingServiceStub, server: "Server", credits: int
    ) -> None:
        self.stub = stub
        self.holds = Holds(lambda: stub, seconds=30.0)
        self.server = server
        self.credits = credits
        self.made: dict[str, list[str]] = {}
        self._numbers = itertools.count()

    async def fund(self, account_id: str) -> None:
        if account_id not in self.made:
            self.made[account_id] = []
            request = billing_pb2.GrantRequest(account_id=account_id, amount=self.credits)
            await self.stub.Grant(request)

    async def pair(self, account_id: str, batched: bool) -> None:
        reference = f"job_bench_{next(self._numbers):08d}"
        self.made[account_id].append(reference)
        reserve = billing_pb2.ReserveRequest(
            account_id=account_id, reference=reference, usage=USAGE, livemode=True
        )
        capture = billing_pb2.CaptureRequest(reference=reference)
        if batched:
            await self.holds.reserve(reserve)
            await self.holds.capture(capture)
        else:
            await self.stub.Reserve(reserve)
            await self.stub.Capture(capture)

    async def run(
        self, pairs: int, callers: int, accounts: int, batched: bool = False
    ) -> "Figures":
        """Pairs per second of `pairs` pairs made by `callers` concurrent callers, caller k
        paying from account k modulo `accounts`, and the CPU time per pair of each side."""
        names = [f"acct_bench_{n}" for n in range(accounts)]
        for name in names:
            await self.fund(name)
        left = pairs

        async def caller(account_id: str) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await self.pair(account_id, batched)

        started, cpu_before = time.perf_counter(), self.server.cpu_seconds()
        callers_before = time.process_time()
        await asyncio.gather(*(caller(names[k % accounts]) for k in range(callers)))
        seconds, cpu_after = time.perf_counter() - started, self.server.cpu_seconds()
        callers_cpu = time.process_time() - callers_before
        billing, backends = (
            after - before for after, before in zip(cpu_after, cpu_before, strict=True)
        )
        return Figures(
            pairs / seconds,
            callers_cpu / pairs * 1e6,
            billing / pairs * 1e6,
            backends / pairs * 1e6,
        )

    async def check_books(self) -> None:
        """Every pair made one HOLD and one CAPTURE entry; the entries sum to the balance."""
        for account_id, references in self.made.items():
            kinds, total = await self._ledger(account_id)
            expected = Counter({(kind, ref): 1 for ref in references for kind in PAIR_KINDS})
            expected[(billing_pb2.LEDGER_ENTRY_KIND_GRANT, "")] = 1
            balance = await self.stub.GetBalance(
                billing_pb2.GetBalanceRequest(account_id=account_id)
            )
            problems = []
            if kinds != expected:
                problems.append(
                    f"not one HOLD and one CAPTURE per pair: {kinds - expected} duplicated, "
                    f"{expected - kinds} lost"
                )
            if (balance.available, balance.reserved) != (self.credits - len(references), 0):
                problems.append(
                    f"{balance.available} available and {balance.reserved} reserved, expected "
                    f"{self.credits - len(references)} and 0"
                )
            if total != balance.available:
                problems.append(f"entries sum to {total}, the balance says {balance.available}")
            if problems:
                raise SystemExit(f"{account_id}: {'; '.join(problems)}")

    async def _ledger(self, account_id: str) -> tuple[Counter[tuple[int, str]], int]:
        kinds: Counter[tuple[int, str]] = Counter()
        total = 0
        token = ""
        while True:
            page = await self.stub.ListLedgerEntries(
                billing_pb2.ListLedgerEntriesRequest(
                    account_id=account_id, page_size=100, page_token=token
                )
            )
            for entry in page.ledger_entries:
                kinds[(entry.kind, entry.reference)] += 1
                total += entry.amount
            token = page.next_page_token
            if not token:
                return kinds, total


class Figures(NamedTuple):
    pairs_per_second: float
    callers_cpu_us_per_pair: float
    billing_cpu_us_per_pair: float
    postgres_cpu_us_per_pair: float


class Server:
    """The billing process and the PostgreSQL backends of its connections."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self._backends: dict[int, psutil.Process] = {}

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU seconds so far of the billing process, and of the backends it has used."""
        self._find_backends()
        return _cpu_seconds(self.process), sum(map(_cpu_seconds, self._backends.values()))

    def _find_backends(self) -> None:
        """Adds the backends of the connections opened since last time (a pool opens them as
        it needs them, and keeps them)."""
        port = make_url(POSTGRES_URL).port or 5432
        ours = {
            c.laddr.port
            for c in self.process.net_connections("tcp")
            if c.raddr and c.raddr.port == port
        }
        for c in psutil.net_connections("tcp"):
            if c.pid and c.laddr.port == port and c.raddr and c.raddr.port in ours:
                self._backends.setdefault(c.pid, psutil.Process(c.pid))


def _cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:  # a backend whose connection closed: its time is lost
        return 0.0
    return times.user + times.system


async def measure(
    address: str,
    server: Server,
    data_dir: Path,
    pairs: int,
    callers: int,
    settle: Callable[[], Awaitable[None]],
) -> dict[str, Figures]:
    """The figures of each run, `settle` awaited before each."""
    token = MeshSettings(data_dir=data_dir).internal_token()
    channel = open_channel(address, service_token=token, timeout=30.0)
    try:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        bench = Bench(stub, server, WARM_UP_PAIRS + 5 * pairs)
        await bench.run(WARM_UP_PAIRS, callers, callers)
        await settle()
        figures = {"sequential": await bench.run(pairs, 1, 1)}
        for accounts in (callers, 1):
            for batched in (False, True):
                load = f"{callers} callers, {accounts} account{'s' if accounts > 1 else ''}"
                calls = "batched" if batched else "a call each"
                await settle()
                figures[f"{load}, {calls}"] = await bench.run(pairs, callers, accounts, batched)
        await bench.check_books()
        return figures
    finally:
        await channel.close()


async def run_sql(statement: str) -> None:
    dsn = make_url(POSTGRES_URL).set(drivername="postgresql")
    connection = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def statistics_kept(schema: str) -> Callable[[], Awaitable[None]]:
    """Analyzes billing's tables in `schema`, as autovacuum would in a deployment.

    A deployment's autovacuum analyzes a table each time a tenth of it changed, and the
    planner's cached plans are made again. This machine's PostgreSQL may run with autovacuum
    off (`SHOW autovacuum`): a fresh schema then never gets statistics, and the plans made for
    nearly empty tables (a scan of every hold rather than a lookup by reference) stay as the
    tables grow to tens of thousands of rows, which would make each batch's statements cost
    more and more. So the bench analyzes before each run.
    """
    tables = ", ".join(f'"{schema}".{table}' for table in ("balances", "holds", "ledger_entries"))
    return lambda: run_sql(f"ANALYZE {tables}")


async def _nothing() -> None:
    return None


def bench_database(name: str, pairs: int, callers: int) -> dict[str, Figures]:
    schema = f"bench_{secrets.token_hex(4)}"
    database = {}
    if name == "postgres":
        database = {"MP_BILLING_DATABASE_URL": POSTGRES_URL, "MP_BILLING_DATABASE_SCHEMA": schema}
    with tempfile.TemporaryDirectory() as folder:
        try:
            with billing_process(Path(folder), database) as (address, server):
                settle = statistics_kept(schema) if name == "postgres" else _nothing
                return eventloop.run(measure(address, server, Path(folder), pairs, callers, settle))
        finally:
            if name == "postgres":
                eventloop.run(run_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4000, help="pairs per run")
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--only", choices=("postgres", "sqlite"))
    args = parser.parse_args()
    for name in (args.only,) if args.only else ("postgres", "sqlite"):
        for run, figures in bench_database(name, args.pairs, args.callers).items():
            print(
                f"{name:<8} {run:<37} {figures.pairs_per_second:5.0f} reserve+capture pairs/s,"
                f" CPU per pair: callers {figures.callers_cpu_us_per_pair:5.0f} us,"
                f" billing {figures.billing_cpu_us_per_pair:5.0f} us"
                + (
                    f", postgres {figures.postgres_cpu_us_per_pair:5.0f} us"
                    if name == "postgres"
                    else ""
                )
            )
        print(f"{name:<8} ledgers checked: no lost or duplicated entries")


if __name__ == "__main__":
    main()
