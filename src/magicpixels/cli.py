"""The `magicpixels` command: run the mesh, run one service, operator commands."""

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import ValidationError

from magicpixels import client_commands
from magicpixels.core import eventloop, tracing
from magicpixels.core import settings as config
from magicpixels.core.errors import SetupError
from magicpixels.core.logging import configure_logging

if TYPE_CHECKING:
    from magicpixels.billing.v1 import billing_pb2_grpc

T = TypeVar("T")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        mesh_settings = config.MeshSettings(
            **({"data_dir": args.data_dir} if args.data_dir else {})
        )
        configure_logging(mesh_settings.log_level, mesh_settings.log_format)
        # Spans name the process: the mesh (`up`), or the one service it serves.
        tracing.configure_from_environment("-".join(("magicpixels", *_served(args))))
        if args.mesh_command:  # its own user's only: databases (webhook secrets), blobs, secrets
            mesh_settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        args.run(args, mesh_settings)
        sys.stdout.flush()  # here rather than at exit, where a reader gone early is not caught
    except BrokenPipeError:  # its output piped into `head`, which has read enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit
        raise SystemExit(0) from None
    # A port in use, an unwritable data folder, a database unreachable, a setting refused:
    # said in one line, without a traceback.
    except (OSError, SetupError) as refused:
        raise SystemExit(f"magicpixels: {refused}") from None
    except ValidationError as refused:
        raise SystemExit(f"magicpixels: {_settings_refused(refused)}") from None


def _settings_refused(error: ValidationError) -> str:
    """The settings a ValidationError refused, named as their environment variables."""
    settings_class = getattr(config, error.title, None)
    prefix = settings_class.model_config.get("env_prefix", "") if settings_class else ""
    return "; ".join(  # a nested fault is told of its variable (MP_BILLING_PLANS), as set
        f"{prefix}{fault['loc'][0]}".upper() + f": {fault['msg'].removeprefix('Value error, ')}"
        for fault in error.errors()
    )


def _credits(text: str) -> int:
    """A number of credits within what billing moves at once (MAX_MOVEMENT, either way)."""
    from magicpixels.services.billing.domain import MAX_MOVEMENT

    try:
        amount = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of credits") from None
    if abs(amount) > MAX_MOVEMENT:
        raise argparse.ArgumentTypeError(f"at most {MAX_MOVEMENT} credits at once")
    return amount


def _served(args: argparse.Namespace) -> tuple[str, ...]:
    service = getattr(args, "service", None)
    return (service,) if service else ()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magicpixels", description=__doc__)
    parser.set_defaults(mesh_command=False)  # an API user's command: no data folder of a mesh
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run the whole mesh on this machine (embedded defaults)")
    up.add_argument("--port", type=int, default=None, help="the gateway's HTTP port (8080)")
    up.add_argument("--host", default=None, help="the gateway's address (127.0.0.1)")
    up.add_argument(
        "--processes",
        action="store_true",
        help="each service in its own process, configured by environment as a pod is",
    )
    up.add_argument(
        "--database-url",
        default=None,
        help="with --processes: one PostgreSQL database for all, a schema per service",
    )
    _data_dir_option(up)
    up.set_defaults(run=_up)

    serve = commands.add_parser("serve", help="run one service, configured by environment")
    serve.add_argument("service", choices=[*config.SERVICES, "gateway"])
    _data_dir_option(serve)
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser(
        "migrate", help="bring services' databases to their newest revision, then exit"
    )
    migrate.add_argument(
        "services", nargs="*", metavar="SERVICE", help=f"of {', '.join(config.DATABASE_SERVICES)}"
    )
    _data_dir_option(migrate)
    migrate.set_defaults(run=_migrate)

    admin = commands.add_parser("admin", help="operator commands").add_subparsers(
        required=True, metavar="ACTION"
    )
    grant = admin.add_parser("grant-credits", help="grant credits to an account")
    grant.add_argument("account_id")
    grant.add_argument("amount", type=_credits)
    grant.add_argument("--description", default="operator grant")
    _data_dir_option(grant)
    grant.set_defaults(run=_grant_credits)
    adjust = admin.add_parser(
        "adjust-credits", help="correct an account's credits, up or down (never below zero)"
    )
    adjust.add_argument("account_id")
    adjust.add_argument("amount", type=_credits, help="signed: -5 takes 5 credits")
    adjust.add_argument("description", help="why: the account's ledger shows it")
    adjust.add_argument(
        "--reference", default="", help="makes it idempotent: a reference used before is a no-op"
    )
    _data_dir_option(adjust)
    adjust.set_defaults(run=_adjust_credits)
    approve = admin.add_parser(
        "approve-subscription",
        help="approve an account's pending subscription: its period starts, with its credits",
    )
    approve.add_argument("account_id")
    _data_dir_option(approve)
    approve.set_defaults(run=_approve_subscription)
    client_commands.add_commands(commands)
    return parser


def _data_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(mesh_command=True)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"where the mesh keeps its data (MP_DATA_DIR, default {config.default_data_dir()})",
    )


def _up(args: argparse.Namespace, mesh_settings: config.MeshSettings) -> None:
    from magicpixels.mesh import run_until_stopped, start_mesh

    overrides = {k: v for k, v in (("port", args.port), ("host", args.host)) if v is not None}
    gateway = config.GatewaySettings(**overrides)
    if args.processes:
        _up_processes(args, mesh_settings, gateway)
        return
    if args.database_url:
        raise SystemExit("magicpixels: --database-url goes with --processes")

    async def run() -> None:
        running = await start_mesh(mesh_settings, gateway)
        print(
            f"MagicPixels mesh on {gateway.base_url()}  (data: {mesh_settings.data_dir})",
            flush=True,
        )
        await run_until_stopped(running)

    eventloop.run(run())


def _up_processes(
    args: argparse.Namespace, mesh_settings: config.MeshSettings, gateway: config.GatewaySettings
) -> None:
    import os

    from magicpixels.processes import ProcessFailed, run_processes, topology

    environments = topology(mesh_settings, gateway, os.environ, args.database_url)
    announce = f"MagicPixels mesh on {gateway.base_url()}  (data: {mesh_settings.data_dir})"
    try:
        # asyncio's own loop: the supervisor serves nothing, and uvloop cannot start a child
        # in a process group of its own.
        asyncio.run(run_processes(environments, mesh_settings.grace_seconds, announce))
    except ProcessFailed as failed:
        raise SystemExit(f"magicpixels: {failed}") from None


def _migrate(args: argparse.Namespace, mesh_settings: config.MeshSettings) -> None:
    from magicpixels.mesh import migrate_database

    unknown = set(args.services) - set(config.DATABASE_SERVICES)
    if unknown:
        raise SystemExit(f"magicpixels: no database service {', '.join(sorted(unknown))}")
    for service in args.services or config.DATABASE_SERVICES:
        eventloop.run(migrate_database(mesh_settings, service))
        print(f"migrated {service}", flush=True)


def _serve(args: argparse.Namespace, mesh_settings: config.MeshSettings) -> None:
    import structlog

    from magicpixels.core.metrics import serve_metrics
    from magicpixels.mesh import run_until_stopped, start_mesh

    # Every line says which process wrote it: `up --processes` interleaves them on one output.
    structlog.contextvars.bind_contextvars(process=args.service)

    async def run() -> None:
        if args.service == "gateway":
            running = await start_mesh(mesh_settings, config.GatewaySettings(), only=())
            await run_until_stopped(running)
            return
        running = await start_mesh(mesh_settings, None, only=(args.service,))
        service = running.services[0][0]
        exporter = serve_metrics(service.settings.host, mesh_settings.metrics_port)
        try:
            await run_until_stopped(running)
        finally:
            exporter.shutdown()

    eventloop.run(run())


def _grant_credits(args: argparse.Namespace, mesh_settings: config.MeshSettings) -> None:
    from magicpixels.billing.v1 import billing_pb2

    request = billing_pb2.GrantRequest(
        account_id=args.account_id, amount=args.amount, description=args.description
    )
    entry = _billing_admin(mesh_settings, args.account_id, lambda billing: billing.Grant(request))
    print(f"granted {args.amount} credits to {args.account_id}: {entry.balance_after} available")


def _adjust_credits(args: argparse.Namespace, mesh_settings: config.MeshSettings) -> None:
    from magicpixels.billing.v1 import billing_pb2

    request = billing_pb2.AdjustCreditsRequest(
        account_id=args.account_id,
        amount=args.amount,
        description=args.description,
        reference=args.reference,
    )
    entry = _billing_admin(
        mesh_settings, args.account_id, lambda billing: billing.AdjustCredits(request)
    )
    print(f"adjusted {args.account_id} by {entry.amount} credits: {entry.balance_after} available")


def _approve_subscription(args: argparse.Namespace, mesh_settings: config.MeshSettings) -> None:
    from magicpixels.billing.v1 import billing_pb2
    from magicpixels.core.timestamps import from_timestamp, rfc3339

    request = billing_pb2.ApproveSubscriptionRequest(account_id=args.account_id)
    found = _billing_admin(
        mesh_settings, args.account_id, lambda billing: billing.ApproveSubscription(request)
    )
    until = rfc3339(from_timestamp(found.current_period_end_time))
    print(f"approved {found.id}: {args.account_id} on {found.plan_id} until {until}")


def _billing_admin(
    mesh_settings: config.MeshSettings,
    account_id: str,
    call: Callable[["billing_pb2_grpc.BillingServiceStub"], Awaitable[T]],
) -> T:
    """An operator's billing call; a refusal exits with billing's reason, without a traceback."""
    import grpc

    from magicpixels.core.errors import DomainError

    try:
        return eventloop.run(_call_billing(mesh_settings, account_id, call))
    except DomainError as error:
        raise SystemExit(f"magicpixels: {error.message}") from None
    except grpc.aio.AioRpcError as error:
        raise SystemExit(f"magicpixels: refused: {error.details()}") from None


async def _call_billing(
    mesh_settings: config.MeshSettings,
    account_id: str,
    call: Callable[["billing_pb2_grpc.BillingServiceStub"], Awaitable[T]],
) -> T:
    """Makes the call for an account that auth knows (billing alone would take any id)."""
    from magicpixels.auth.v1 import auth_pb2, auth_pb2_grpc
    from magicpixels.billing.v1 import billing_pb2_grpc
    from magicpixels.core.bus import LocalBus
    from magicpixels.core.service import Mesh

    if mesh_settings.service_token is None and not config.secret_exists(
        mesh_settings.data_dir, "service_token"
    ):  # a new token, made here, would be refused: say what the mesh's is
        raise SystemExit(
            "magicpixels: no service token: set MP_SERVICE_TOKEN to the mesh's, or --data-dir "
            f"to the folder the mesh runs with (this is {mesh_settings.data_dir})"
        )
    mesh = Mesh(mesh_settings, LocalBus())
    try:
        auth = auth_pb2_grpc.AuthServiceStub(mesh.channel("auth"))
        await auth.GetAccount(auth_pb2.GetAccountRequest(id=account_id))
        return await call(billing_pb2_grpc.BillingServiceStub(mesh.channel("billing")))
    finally:
        await mesh.close()


if __name__ == "__main__":
    main()
