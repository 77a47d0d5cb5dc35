"""What metrics and traces cost: POST /v1/jobs throughput of the mesh without them, with
metrics (tracing off), and with tracing on into an in-memory exporter (all of it, and all but
the SQLAlchemy spans).

    .venv/bin/python bench/observability.py [--seconds 10] [--rounds 3]
    .venv/bin/python bench/observability.py --instructions 200 [--callers 16]
    .venv/bin/python bench/observability.py --span-floor 2000
    .venv/bin/python bench/observability.py --hop-floor 300

`bare` is this checkout with no instrumentation package loaded: bench/uninstrumented holds a
prometheus-client that records nothing, put ahead of the installed one, and tracing is off (the
serving process checks that no OpenTelemetry SDK or instrumentation module was imported). What
`bare` still runs is ours: the timing around each call and request, request ids, log binding.
Each variant serves the mesh without inference (so jobs stay queued) pinned to CPU 0 with wrk on
CPU 1, as `bench/jobs.py http` does; the variants take turns, a fresh mesh each time, and each
figure is the median over the rounds. Ratios are to `bare`, and to `metrics` (tracing off), so
that the second says what tracing alone costs. `--instructions` counts instead what the mesh's
process runs per request under callgrind (valgrind's), which a busy machine does not move: the
throughput on a machine whose other work comes and goes moves 10-20% between runs. With more
than one caller, how concurrent requests fall into billing's batches moves each variant's count
by a few percent; `--callers 1` keeps the variants' ratios from that. It also counts a POST of
the bare Starlette baseline of ../shared/bench the same way, the denominator of issue 6's
target. `--span-floor` counts what one span costs the SDK alone, with no instrumentation around
it (a statement's five attributes, into memory as above): times the spans of a request, the
least that tracing can add to it. `--hop-floor` counts one grpc.aio unary call with client and
server in one process and nothing around it: times the hops of a request, the least that talking
gRPC costs it.
"""

import argparse
import asyncio
import contextlib
import faulthandler
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
from jobs import BODY, Load, baseline_command, cpu_seconds, post_script, wait_listening

UNINSTRUMENTED = Path(__file__).resolve().parent / "uninstrumented"
PORT = 18082
# What tracing loads once on; a process with tracing off must have none of it.
_TRACING_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.instrumentation")
# Spans kept in memory are dropped this often, so that a long run measures export, not growth.
_CLEAR_SECONDS = 1.0


def serve_mesh(port: int, data_dir: str, traced: bool) -> None:
    """The mesh without inference, until SIGTERM; `traced`: every span into memory."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    from magicpixels.core import eventloop
    from magicpixels.core.logging import configure_logging
    from magicpixels.core.settings import SERVICES, GatewaySettings, MeshSettings
    from magicpixels.mesh import run_until_stopped, start_mesh

    configure_logging("warning", "json")

    async def run() -> None:
        exporter = _traced() if traced else None
        services = tuple(name for name in SERVICES if name != "inference")
        gateway = GatewaySettings(port=port, rate_limit_per_key=1_000_000)
        running = await start_mesh(MeshSettings(data_dir=Path(data_dir)), gateway, services)
        if not traced:
            loaded = sorted(name for name in sys.modules if name.startswith(_TRACING_MODULES))
            assert not loaded, f"tracing is off, yet these were imported: {loaded}"
        clearing = asyncio.create_task(_keep_clearing(exporter)) if exporter else None
        await run_until_stopped(running)
        if clearing:
            clearing.cancel()

    eventloop.run(run())


def _traced() -> object:
    """Spans into memory, wired as `configure_from_environment` wires an exporter."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from magicpixels.core import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracing.install(provider)
    return exporter


async def _keep_clearing(exporter: object) -> None:
    while True:
        await asyncio.sleep(_CLEAR_SECONDS)
        exporter.clear()  # type: ignore[attr-defined]


@contextlib.contextmanager
def serving(variant: str, command: Sequence[str]) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The variant's mesh, started by `command` (its first words), with a funded account: the
    process and the account's token."""
    env = dict(os.environ)
    arguments = [*command, sys.executable, __file__, "serve-mesh", "--port", str(PORT)]
    if variant == "bare":
        env["PYTHONPATH"] = str(UNINSTRUMENTED)
    if variant.startswith("traced"):
        arguments.append("--traced")
    if variant == "traced-no-sql":  # every span but SQLAlchemy's, the most numerous
        env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = "sqlalchemy"
    with tempfile.TemporaryDirectory() as name:
        log = Path(tempfile.gettempdir()) / f"observability-{variant}.log"
        mesh = subprocess.Popen([*arguments, "--data-dir", name], env=env, stderr=log.open("wb"))
        try:
            wait_listening(f"http://127.0.0.1:{PORT}/healthz")
            yield mesh, _funded_token(name)
        finally:
            _stop(mesh, log)


def one_run(variant: str, seconds: int) -> Load:
    with (
        serving(variant, ["taskset", "-c", "0"]) as (mesh, token),
        tempfile.TemporaryDirectory() as name,
    ):
        script = post_script(Path(name), token)
        url = f"http://127.0.0.1:{PORT}/v1/jobs"
        _wrk(url, 2, script, mesh.pid)  # warm-up
        return _wrk(url, seconds, script, mesh.pid)


def count_instructions(variant: str, requests: int, callers: int) -> float:
    """The instructions the mesh's process runs per POST /v1/jobs, counted by callgrind over
    `requests` of them, `callers` at a time, after a warm-up: the same count on a busy machine
    as on an idle one. Only user space is counted: the kernel's share (sockets, thread
    hand-overs) is the same with or without instrumentation, so the ratios it gives are the
    strict ones."""
    with tempfile.TemporaryDirectory() as name:
        with serving(variant, _callgrind(Path(name))) as (mesh, token):
            _count_posts(mesh.pid, token, requests, callers)
        return _instructions(Path(name)) / requests


def bare_post_instructions(requests: int, callers: int) -> float:
    """What one POST /v1/jobs of the bare Starlette baseline (../shared/bench) runs, counted
    as `count_instructions` counts the mesh's."""
    with tempfile.TemporaryDirectory() as name:
        server = subprocess.Popen(
            [*_callgrind(Path(name)), *baseline_command(PORT)], stderr=subprocess.DEVNULL
        )
        try:
            wait_listening(f"http://127.0.0.1:{PORT}/v1/jobs/seed")
            _count_posts(server.pid, "tok-anchor", requests, callers)
        finally:
            server.terminate()
            server.wait(timeout=60)
        return _instructions(Path(name)) / requests


def _callgrind(folder: Path) -> list[str]:
    """valgrind's callgrind, counting nothing until told to, its counts into `folder`."""
    out = f"--callgrind-out-file={folder / 'callgrind.out'}"
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", out]


def _count_posts(pid: int, token: str, requests: int, callers: int) -> None:
    """20 POSTs to warm the server up, then `requests` counted, and the counts dumped."""
    asyncio.run(_posts(token, 20, callers))
    subprocess.run(["callgrind_control", "--instr=on", str(pid)], check=True, capture_output=True)
    asyncio.run(_posts(token, requests, callers))
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)


def _instructions(folder: Path) -> int:
    """The count of the one dump `_count_posts` asked for."""
    (dumped,) = folder.glob("callgrind.out.*")
    return _summary(dumped)


def _summary(counts: Path) -> int:
    """The instructions a callgrind output file counted in all."""
    total = re.search(r"^summary: (\d+)", counts.read_text(), re.MULTILINE)
    assert total is not None, f"no summary in {counts}"
    return int(total.group(1))


async def _posts(token: str, count: int, callers: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=300) as client:
        ready = asyncio.Semaphore(callers)

        async def post() -> None:
            async with ready:
                (await client.post("/v1/jobs", json=BODY, headers=headers)).raise_for_status()

        await asyncio.gather(*(post() for _ in range(count)))


def _stop(mesh: subprocess.Popen[bytes], log: Path) -> None:
    mesh.send_signal(signal.SIGTERM)
    try:
        mesh.wait(timeout=60)
    except subprocess.TimeoutExpired:  # its threads' stacks go to its log, then it is killed
        mesh.send_signal(signal.SIGUSR1)
        time.sleep(1)
        mesh.kill()
        mesh.wait()
        print(f"  the mesh did not stop within 60 s: see {log}", file=sys.stderr)


def _wrk(url: str, seconds: int, script: Path, server: int) -> Load:
    """Requests per second and the server's CPU microseconds per request (every thread's, the
    exporter's included: a busy shared machine moves it far less than the throughput); answers
    other than 2xx (a busy machine times some out) are reported, not counted as throughput."""
    command = ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(script)]
    cpu_before = cpu_seconds(server)
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(server) - cpu_before
    rate = float(re.findall(r"Requests/sec:\s+([\d.]+)", output)[0])
    total = int(re.findall(r"(\d+) requests in", output)[0])
    failed = re.findall(r"Non-2xx or 3xx responses: (\d+)", output)
    if failed:
        print(f"  ({failed[0]} of {total} answers were errors)", file=sys.stderr)
        rate *= 1 - int(failed[0]) / total
    return Load(rate, cpu * 1e6 / max(total, 1))


def _funded_token(data_dir: str) -> str:
    with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=30) as client:
        signup = client.post("/v1/accounts", json={"email": "bench@example.com"}).json()
        account_id, token = signup["account"]["id"], signup["api_key"]["token"]
        grant = ["admin", "grant-credits", account_id, "100000000", "--data-dir", data_dir]
        subprocess.run(
            [sys.executable, "-m", "magicpixels.cli", *grant], check=True, stdout=subprocess.DEVNULL
        )
        created = client.post("/v1/jobs", json=BODY, headers={"Authorization": f"Bearer {token}"})
        created.raise_for_status()
    return str(token)


def compare(seconds: int, rounds: int) -> None:
    variants = ("bare", "metrics", "traced", "traced-no-sql")
    figures: dict[str, list[Load]] = {variant: [] for variant in variants}
    for _ in range(rounds):
        for variant in variants:
            figures[variant].append(one_run(variant, seconds))
            load = figures[variant][-1]
            print(
                f"  {variant}: {load.per_second:,.0f} req/s, {load.cpu_us:,.0f} us CPU",
                file=sys.stderr,
                flush=True,
            )
    rate = {v: statistics.median(load.per_second for load in figures[v]) for v in variants}
    cpu = {v: statistics.median(load.cpu_us for load in figures[v]) for v in variants}
    print(
        f"POST /v1/jobs, median of {rounds} rounds of {seconds} s (req/s per round in brackets),"
        " as a share of bare's and of metrics'; CPU per request, and the same shares"
    )
    for variant in variants:
        runs = ", ".join(f"{load.per_second:,.0f}" for load in figures[variant])
        print(
            f"  {variant:13} {rate[variant]:5,.0f} req/s = {rate[variant] / rate['bare']:6.1%}"
            f" {rate[variant] / rate['metrics']:6.1%}  [{runs}]  {cpu[variant]:6,.0f} us CPU"
            f" = {cpu['bare'] / cpu[variant]:6.1%} {cpu['metrics'] / cpu[variant]:6.1%}"
        )


# Spans like a statement's, children of one span, into memory as `_traced` wires it.
_SPANS = """
import sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(exporter))
tracer = provider.get_tracer("floor")
attributes = {"db.system": "sqlite", "db.name": "jobs.db", "db.statement": "UPDATE jobs SET",
              "net.peer.name": "localhost", "net.peer.port": 5432}
with tracer.start_as_current_span("request"):
    for made in range(int(sys.argv[1])):
        with tracer.start_as_current_span("UPDATE", attributes=attributes):
            pass
        if made % 1000 == 0:
            exporter.clear()
provider.shutdown()
"""


# One unary call after another, server and client in this process as the embedded mesh runs
# them: a message of a job's size (about 600 bytes) each way, no interceptor, no handler work.
_HOPS = """
import asyncio, sys
import grpc, uvloop

async def main(calls):
    server = grpc.aio.server()
    async def echo(request, context):
        return request
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("f.F", {"E": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/f.F/E")
        for _ in range(calls):
            await call(b"x" * 600, timeout=10)
    await server.stop(None)

uvloop.run(main(int(sys.argv[1])))
"""


def span_floor(spans: int) -> None:
    each = _per_unit(_SPANS, spans)
    print(f"one span, the SDK alone: {each:,.0f} instructions")


def hop_floor(calls: int) -> None:
    each = _per_unit(_HOPS, calls)
    print(f"one grpc.aio unary call, client and server in one process: {each:,.0f} instructions")


def _per_unit(script: str, units: int) -> float:
    """Instructions per unit of `script`'s work: two runs, of `units` and of three times as
    many, the difference over the units between them (what starting Python costs drops out)."""
    counted = []
    with tempfile.TemporaryDirectory() as name:
        for made in (units, 3 * units):
            counts = Path(name) / f"callgrind.{made}"
            command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={counts}"]
            command += [sys.executable, "-c", script, str(made)]
            subprocess.run(command, check=True, capture_output=True)
            counted.append(_summary(counts))
    return (counted[1] - counted[0]) / (2 * units)


def compare_instructions(requests: int, callers: int) -> None:
    variants = ("bare", "metrics", "traced", "traced-no-sql")
    counted = {}
    for variant in variants:
        counted[variant] = count_instructions(variant, requests, callers)
        print(f"  {variant}: {counted[variant]:,.0f} instructions", file=sys.stderr, flush=True)
    baseline = bare_post_instructions(requests, callers)
    print(
        f"POST /v1/jobs, instructions per request over {requests}, {callers} at a time"
        " (callgrind), and the share of bare's and of metrics' that a request costs (the"
        " throughput the CPU allows)"
    )
    for variant in variants:
        count = counted[variant]
        print(
            f"  {variant:13} {count / 1e6:6.2f} M = {counted['bare'] / count:6.1%}"
            f" {counted['metrics'] / count:6.1%}"
        )
    print(
        f"  the bare Starlette baseline (../shared/bench): {baseline / 1e6:.2f} M; the mesh's POST"
        f" with metrics runs {counted['metrics'] / baseline:.1f} times as many"
        f" ({baseline / counted['metrics']:.1%})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve-mesh")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--data-dir", required=True)
    serve.add_argument("--traced", action="store_true")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--instructions", type=int, metavar="REQUESTS", help="count instructions instead"
    )
    parser.add_argument("--callers", type=int, default=16, help="with --instructions")
    parser.add_argument(
        "--span-floor", type=int, metavar="SPANS", help="count what one SDK span costs"
    )
    parser.add_argument(
        "--hop-floor", type=int, metavar="CALLS", help="count what one grpc.aio call costs"
    )
    args = parser.parse_args()
    if args.command == "serve-mesh":
        serve_mesh(args.port, args.data_dir, args.traced)
    elif args.span_floor:
        span_floor(args.span_floor)
    elif args.hop_floor:
        hop_floor(args.hop_floor)
    elif args.instructions:
        compare_instructions(args.instructions, args.callers)
    else:
        compare(args.seconds, args.rounds)


if __name__ == "__main__":
    main()
