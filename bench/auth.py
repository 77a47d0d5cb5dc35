"""API key verification, warm and cold, and how fast a revocation reaches another gateway.

Runs the auth service in a process of its own (SQLite in a fresh data folder, or with
`--postgres` PostgreSQL in a schema of its own, dropped after; Redis as its bus), and in this
process two gateways' shared state (`Gateway`, each with its own Redis connection and principal
cache, as two replicas would have). Prints the median and p99 of:

- warm: `Gateway.principal(token)` for a token verified lately, the work every request does
  (format and checksum, then the cache);
- cold: `VerifyApiKey` over gRPC, what a cache miss costs (lookup by key id, HMAC-SHA256),
  with the CPU time each call took in the auth process and in this one (steadier than
  latency on a busy machine);
- revocation: a key cached by both gateways is revoked through the first; the time from the
  call until the second refuses the key (auth's write, its announcement on Redis, the drop).

    .venv/bin/python bench/auth.py [--calls 5000] [--revocations 20] [--redis-url URL]
        [--postgres [URL]]
"""

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import grpc
from sqlalchemy import make_url

from magicpixels.auth.v1 import auth_pb2
from magicpixels.core import eventloop
from magicpixels.core.bus import RedisBus
from magicpixels.core.logging import configure_logging
from magicpixels.core.service import Mesh
from magicpixels.core.settings import AuthSettings, GatewaySettings, MeshSettings
from magicpixels.gateway.state import Gateway
from magicpixels.mesh import run_until_stopped, start_mesh

POSTGRES_URL = os.environ.get(
    "MP_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(600):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"gave up waiting for {what}")


def serve_auth(settings: MeshSettings, auth: AuthSettings) -> None:
    """The auth service alone, until SIGTERM (the body of the child process)."""
    configure_logging("warning", "console")

    async def run() -> None:
        running = await start_mesh(settings, None, only=("auth",), service_settings={"auth": auth})
        await run_until_stopped(running)

    eventloop.run(run())


@contextlib.asynccontextmanager
async def auth_process(settings: MeshSettings, auth: AuthSettings) -> AsyncIterator[int]:
    """Runs auth in a child process; its process id."""
    spawn = multiprocessing.get_context("spawn")
    process = spawn.Process(target=serve_auth, args=(settings, auth))
    process.start()
    try:
        address = settings.data_dir / "run" / "auth.address"
        await until(lambda: address.exists() or not process.is_alive(), "auth to start")
        if not process.is_alive() or process.pid is None:
            raise SystemExit(f"auth exited with {process.exitcode}")
        yield process.pid
    finally:
        process.terminate()
        process.join(timeout=15)


@contextlib.asynccontextmanager
async def postgres_schema(url: str) -> AsyncIterator[str]:
    """A fresh schema name for auth's tables; the schema is dropped after."""
    schema = f"bench_auth_{secrets.token_hex(4)}"
    try:
        yield schema
    finally:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        connection = await asyncpg.connect(dsn)
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await connection.close()


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) the process has used so far, from Linux's /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def replica(settings: MeshSettings) -> AsyncIterator[Gateway]:
    """One gateway's state, following revocations as a serving gateway does."""
    assert settings.redis_url is not None
    mesh = Mesh(settings, RedisBus(settings.redis_url))
    gateway = Gateway(mesh, GatewaySettings(key_cache_seconds=3600))
    try:
        async with gateway.running():
            await until(lambda: gateway.principals.following, "the revocation feed")
            yield gateway
    finally:
        await mesh.close()
        await mesh.bus.close()


async def timed_us(call: Callable[[], Awaitable[object]], times: int) -> list[float]:
    samples = []
    for _ in range(times):
        started = time.perf_counter_ns()
        await call()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def summary(name: str, samples: list[float], unit: str, target: str) -> str:
    p99 = statistics.quantiles(samples, n=100)[98]
    return (
        f"{name:<34} median {statistics.median(samples):9.1f} {unit}   p99 {p99:9.1f} {unit}"
        f"   (target {target}; n={len(samples)})"
    )


async def revocation_ms(first: Gateway, second: Gateway, account_id: str) -> float:
    """Revokes a key both gateways have cached; ms until the second one refuses it."""
    made = await first.auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(account_id=account_id))
    for gateway in (first, second):
        await gateway.principal(made.token)
    started = time.perf_counter()
    await first.auth.RevokeApiKey(
        auth_pb2.RevokeApiKeyRequest(account_id=account_id, id=made.api_key.id)
    )
    while True:
        try:
            await second.principal(made.token)
        except grpc.aio.AioRpcError:
            return (time.perf_counter() - started) * 1000
        await asyncio.sleep(0)


async def bench(calls: int, revocations: int, redis_url: str, auth: AuthSettings) -> None:
    with tempfile.TemporaryDirectory() as folder:
        settings = MeshSettings(data_dir=Path(folder), redis_url=redis_url)
        async with (
            auth_process(settings, auth) as auth_pid,
            replica(settings) as first,
            replica(settings) as second,
        ):
            created = await first.auth.CreateAccount(
                auth_pb2.CreateAccountRequest(email="bench@example.com")
            )
            request = auth_pb2.VerifyApiKeyRequest(token=created.token)
            await timed_us(lambda: first.auth.VerifyApiKey(request), calls // 10)  # warm-up
            cpu_before = cpu_seconds(auth_pid), time.process_time()
            cold = await timed_us(lambda: first.auth.VerifyApiKey(request), calls)
            auth_cpu = (cpu_seconds(auth_pid) - cpu_before[0]) / calls * 1e6
            gateway_cpu = (time.process_time() - cpu_before[1]) / calls * 1e6
            await first.principal(created.token)
            warm = await timed_us(lambda: first.principal(created.token), calls)
            delays = [
                await revocation_ms(first, second, created.account.id) for _ in range(revocations)
            ]
    print(summary("warm: gateway principal (cached)", warm, "us", "p50 <= 50 us"))
    print(summary("cold: VerifyApiKey over gRPC", cold, "us", "p50 <= 1000 us"))
    print(f"  CPU per cold call: auth {auth_cpu:.0f} us, gateway side {gateway_cpu:.0f} us")
    print(summary("revocation reaching gateway 2", delays, "ms", "<= 1000 ms"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--revocations", type=int, default=20)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=POSTGRES_URL,
        metavar="URL",
        help=f"auth's database on PostgreSQL (default {POSTGRES_URL}) instead of SQLite",
    )
    args = parser.parse_args()
    configure_logging("warning", "console")
    eventloop.run(run(args))


async def run(args: argparse.Namespace) -> None:
    if args.postgres is None:
        print("auth on SQLite")
        await bench(args.calls, args.revocations, args.redis_url, AuthSettings())
        return
    print("auth on PostgreSQL")
    async with postgres_schema(args.postgres) as schema:
        auth = AuthSettings(database_url=args.postgres, database_schema=schema)
        await bench(args.calls, args.revocations, args.redis_url, auth)


if __name__ == "__main__":
    main()
