"""The `conveyor` command: run the whole system, migrate, check the setup, mint dev tokens.

A command that reads Conveyor's schema refuses a database with pending migrations in one line
(exit 2), and a database error any command meets ends it in one line (exit 2), not a traceback."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import uuid
from pathlib import Path

import click
import psycopg

from conveyor.auth.tokens import (
    DEV_TOKEN_TTL_SECONDS,
    SERVICE_TOKEN_TTL_SECONDS,
    mint_service_token,
    mint_token,
)
from conveyor.cli import doctor as doctor_checks
from conveyor.cli.backing import (
    CommandFailed,
    ServiceURLs,
    backing_services,
    database,
    one_line,
)
from conveyor.cli.maintenance import maintenance_group
from conveyor.cli.rerun import rerun
from conveyor.cli.status import status
from conveyor.cli.submit import submit
from conveyor.cli.users import users
from conveyor.errors import ConveyorError
from conveyor.ops.migrations import discover
from conveyor.ops.migrations import migrate as apply_migrations
from conveyor.runs.artifacts import store_for
from conveyor.runs.supabase_storage import StorageUnavailable, SupabaseArtifactStore
from conveyor.settings import Settings, get_settings


def child_environment(settings: Settings, urls: ServiceURLs) -> dict[str, str]:
    """The environment web, worker and beat run with: the resolved URLs, the JWT secrets and a
    fresh folder where every process writes its Prometheus samples (GET /metrics sums them)."""
    env = dict(os.environ)
    hs256_secret = settings.supabase_hs256_secret()
    if hs256_secret is not None:  # none in production on asymmetric keys: the JWKS is used
        env["SUPABASE_JWT_SECRET"] = hs256_secret
    env.update(
        DATABASE_URL=urls.database_url,
        REDIS_URL=urls.redis_url,
        API_JWT_SECRET=settings.api_secret(),
        CONVEYOR_DATA_DIR=str(settings.data_dir.resolve()),
        PROMETHEUS_MULTIPROC_DIR=str(fresh_metrics_dir(settings.data_dir.resolve() / "metrics")),
    )
    return env


def fresh_metrics_dir(path: Path) -> Path:
    """An empty folder for this run's metric files (samples of earlier runs' dead processes
    would otherwise be summed in)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# gthread, closing open websockets with 1001 when the worker is told to stop.
WEB_WORKER_CLASS = "web.gunicorn_worker.GracefulThreadWorker"
GUNICORN_CONFIG = "python:web.gunicorn_config"  # server hooks


def gunicorn_command(python: str, *, host: str, port: int, workers: int, threads: int) -> str:
    """The web process: gunicorn gthread. Each open websocket holds a thread for its lifetime,
    so threads (and worker connections) are sized for the sockets one worker may receive."""
    return (
        f"{python} -m gunicorn 'web:create_app()' --bind {host}:{port} "
        f"--workers {workers} --worker-class {WEB_WORKER_CLASS} --threads {threads} "
        f"--worker-connections {threads + 100} --graceful-timeout 20 "
        f"--config {GUNICORN_CONFIG}"
    )


class ConveyorGroup(click.Group):
    """The command group: a database (psycopg) or Conveyor error escaping any command becomes
    one line on stderr and exit 2 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except psycopg.Error as exc:
            raise CommandFailed(f"database error: {one_line(exc)}") from exc
        except ConveyorError as exc:
            raise CommandFailed(one_line(exc)) from exc


@click.group(cls=ConveyorGroup)
def main() -> None:
    """Conveyor: background jobs for AI products on Supabase and Stripe."""


@main.command()
@click.option("--port", type=int, default=None, help="Web port (default: WEB_PORT or 8000).")
@click.option("--host", default=None, help="Web bind address (default: WEB_HOST or 127.0.0.1).")
@click.option("--web-workers", type=int, default=2, show_default=True)
@click.option(
    "--web-threads", type=int, default=None, help="Threads per web worker (default: WEB_THREADS)."
)
@click.option("--concurrency", type=int, default=2, show_default=True, help="Worker processes.")
def run(
    port: int | None, host: str | None, web_workers: int, web_threads: int | None, concurrency: int
) -> None:
    """Start embedded services if needed, migrate, then run web, worker and beat until Ctrl-C."""
    from honcho.manager import Manager

    settings = get_settings()
    port = port or settings.web_port
    host = host or settings.web_host
    python = shlex.quote(sys.executable)
    with backing_services(settings) as urls:
        applied = apply_migrations(urls.database_url)
        click.echo(f"migrations applied: {len(applied)}")
        store = store_for(settings)
        if isinstance(store, SupabaseArtifactStore):
            try:
                click.echo(store.ensure_bucket())
            except StorageUnavailable as exc:
                # Runs that need it wait for Storage; everything else works meanwhile.
                click.echo(f"warning: {exc.message}", err=True)
        env = child_environment(settings, urls)
        manager = Manager()
        manager.add_process(
            "web",
            gunicorn_command(
                python,
                host=host,
                port=port,
                workers=web_workers,
                threads=web_threads or settings.web_threads,
            ),
            env=env,
        )
        manager.add_process(
            "worker",
            f"{python} -m celery -A worker.app worker --loglevel INFO "
            f"--concurrency {concurrency} --queues runs,usage,webhooks,maintenance",
            env=env,
        )
        manager.add_process(
            "beat", f"{python} -m celery -A worker.app beat --loglevel INFO", env=env
        )
        click.echo(f"Conveyor API: http://{host}:{port}/api/health  (Ctrl-C stops everything)")
        manager.loop()
    sys.exit(manager.returncode or 0)


@main.command()
def migrate() -> None:
    """Apply pending SQL migrations (starting embedded Postgres when DATABASE_URL is unset)."""
    settings = get_settings()
    with database(settings) as database_url:
        applied = apply_migrations(database_url)
    click.echo(
        f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "")
    )
    store = store_for(settings)
    if isinstance(store, SupabaseArtifactStore):
        click.echo(store.ensure_bucket())  # StorageUnavailable: one line, exit 2 (ConveyorGroup)


@main.command("sql")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the files to, e.g. supabase/migrations (created if missing).",
)
def sql_export(out_dir: Path) -> None:
    """Write the migrations into a folder as Supabase CLI files, for `supabase db push`.

    For a project that applies its schema with the Supabase CLI instead of `conveyor migrate`:
    each file keeps its name, <timestamp>_<name>.sql. A file of the same name already in the
    folder must have the same content (it is then left as is); a different one stops the
    export before anything is written (exit 2)."""
    migrations = discover()
    conflicts = [
        m.filename
        for m in migrations
        if (out_dir / m.filename).exists()
        and (
            not (out_dir / m.filename).is_file()
            or (out_dir / m.filename).read_bytes() != m.sql.encode()
        )
    ]
    if conflicts:
        raise CommandFailed(
            f"{out_dir} already holds {', '.join(conflicts)} with different content; "
            "nothing was written (a migration is never edited once applied: move that file "
            "away or write to an empty folder)"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for migration in migrations:
            target = out_dir / migration.filename
            if target.exists():
                click.echo(f"unchanged {target}")
            else:
                target.write_bytes(migration.sql.encode())
                click.echo(f"wrote {target}")
    except OSError as exc:
        raise CommandFailed(f"cannot write to {out_dir}: {exc.strerror or exc}") from exc
    click.echo(
        f"{len(migrations)} migration(s) in {out_dir}: apply them with `supabase db push` "
        "(from the project whose supabase/migrations folder holds them)"
    )


@main.command()
def doctor() -> None:
    """Print what is configured and whether each dependency is reachable (exit 1 on a FAIL line;
    a warn line is advice and does not change the exit code)."""
    ok = True
    for check in doctor_checks.run_checks(get_settings()):
        mark = "ok " if check.ok else "warn" if check.warn_only else "FAIL"
        click.echo(f"[{mark}] {check.name}: {check.detail}")
        ok = ok and (check.ok or check.warn_only)
    sys.exit(0 if ok else 1)


@main.command()
@click.option("--user", "user_id", type=click.UUID, default=None, help="User id (default: random).")
@click.option("--email", default=None)
@click.option("--admin", is_flag=True, help="Mark the user an admin (app_metadata.role).")
@click.option("--service", "service_name", default=None, help="Service token with this name.")
@click.option("--scope", "scopes", multiple=True, help="Service token scope (repeatable).")
@click.option("--ttl", type=int, default=None, help="Lifetime in seconds.")
def token(
    user_id: uuid.UUID | None,
    email: str | None,
    admin: bool,
    service_name: str | None,
    scopes: tuple[str, ...],
    ttl: int | None,
) -> None:
    """Mint a user token shaped like Supabase's (development), or with --service a service token."""
    settings = get_settings()
    if service_name is not None or scopes:
        if not scopes:
            raise click.UsageError("a service token needs at least one --scope, e.g. usage:write")
        click.echo(
            mint_service_token(
                service_name or "cli",
                list(scopes),
                secret=settings.api_secret(),
                ttl_seconds=ttl or SERVICE_TOKEN_TTL_SECONDS,
            )
        )
        return
    click.echo(
        mint_token(
            user_id or uuid.uuid4(),
            secret=settings.jwt_secret(),
            audience=settings.jwt_audience,
            email=email,
            admin=admin,
            ttl_seconds=ttl or DEV_TOKEN_TTL_SECONDS,
        )
    )


main.add_command(maintenance_group, "maintenance")
main.add_command(submit)
main.add_command(rerun)
main.add_command(status)
main.add_command(users)
