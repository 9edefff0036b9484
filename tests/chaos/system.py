"""The system under chaos, as production runs it: its own Postgres and Redis (which the suite
stops and starts), the web app under gunicorn, two workers and two beats, each a process."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
import requests

from conveyor.cli.main import gunicorn_command
from conveyor.cli.services import APP_DATABASE, EmbeddedRedis, ensure_database, free_port
from conveyor.ops.broker_queues import BrokerUnreachable
from conveyor.ops.migrations import migrate
from tests.rabbitmq_vhost import ScratchVhost
from tests.support import API_SECRET, JWT_SECRET, REPO, celery_process, wait_until, worker_args

STRIPE_SECRET = "whsec_chaos_suite_secret"
PACK_PRICE = "price_pack_chaos"
CREDITS_PER_PACK = 100
LEASE_SECONDS = 6
QUEUES = "runs,usage,webhooks,maintenance"
WEB_WORKERS = 2
WEB_THREADS = 8
WORKER_CONCURRENCY = 2
STARTUP_SECONDS = 60.0


class RestartablePostgres:
    """An embedded PostgreSQL 16 (pgserver) of the suite's own, stopped and started with pg_ctl."""

    def __init__(self, data_dir: Path) -> None:
        import pgserver  # type: ignore[import-untyped]

        self._server = pgserver.get_server(data_dir, cleanup_mode="delete")
        admin_url = str(self._server.get_uri())
        ensure_database(admin_url, APP_DATABASE)
        self.url = str(self._server.get_uri(APP_DATABASE))
        self._socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl  # type: ignore[import-untyped]

        pg_ctl(list(args), pgdata=self._server.pgdata, user=self._server.system_user, timeout=30)

    def stop(self) -> None:
        """Stop at once: `-m fast` rolls back open transactions and closes every session."""
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        """Start again with the options pgserver gave it (Unix socket only, no TCP port)."""
        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", str(self._server.log),
            "start",
        )  # fmt: skip

    def close(self) -> None:
        """Stop the server for good and delete its data."""
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        self._server.cleanup()


class System:
    """Postgres, Redis, web, workers and beats of one chaos session, in tmp; Celery's broker is
    Redis, or with `rabbitmq` given, that RabbitMQ."""

    def __init__(self, tmp: Path, rabbitmq: ScratchVhost | None = None) -> None:
        self.tmp = tmp
        self.rabbitmq = rabbitmq
        self.broker = "rabbitmq" if rabbitmq is not None else "redis"
        self.logs = tmp / "logs"
        self.logs.mkdir(parents=True)
        self.postgres = RestartablePostgres(tmp / "pg")
        migrate(self.postgres.url)
        self.redis = EmbeddedRedis(tmp / "redis", port=free_port(), persist=True)
        self.redis.start()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.web: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.beats: dict[str, subprocess.Popen[bytes]] = {}

    def env(self) -> dict[str, str]:
        """The settings every process runs with: short leases and timeouts so that what a
        killed process held comes back within seconds rather than production's minutes."""
        prices = {PACK_PRICE: {"credits": CREDITS_PER_PACK}}
        return {
            "DATABASE_URL": self.postgres.url,
            "REDIS_URL": self.redis.url,
            "BROKER_URL": self.rabbitmq.url if self.rabbitmq is not None else "",
            "SUPABASE_JWT_SECRET": JWT_SECRET,
            "API_JWT_SECRET": API_SECRET,
            "CONVEYOR_DATA_DIR": str(self.tmp / "data"),
            "CONVEYOR_WORKFLOW_MODULES": "tests.chaos.workflows",
            "PROMETHEUS_MULTIPROC_DIR": str(self._metrics_dir()),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "WARNING",
            "RUN_LEASE_SECONDS": str(LEASE_SECONDS),
            "CANCEL_CHECK_SECONDS": "0.5",
            "REQUEUE_AFTER_SECONDS": "5",
            "BROKER_VISIBILITY_TIMEOUT_SECONDS": "15",
            "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
            "STRIPE_PRICES": json.dumps(prices),
            "STRIPE_RECONCILE_FROM_API": "false",
            "STRIPE_EVENT_STUCK_SECONDS": "5",
        }

    def _metrics_dir(self) -> Path:
        path = self.tmp / "metrics"
        path.mkdir(exist_ok=True)
        return path

    def start_web(self) -> None:
        """gunicorn with `conveyor run`'s command line; returns once /api/health answers 200."""
        command = gunicorn_command(
            sys.executable, host="127.0.0.1", port=self.port, workers=WEB_WORKERS,
            threads=WEB_THREADS,
        )  # fmt: skip
        with (self.logs / "web.log").open("ab") as log:
            self.web = subprocess.Popen(
                shlex.split(command),
                cwd=REPO,
                env={**os.environ, **self.env()},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._web_ready, STARTUP_SECONDS, "the web app answering its health check")

    def _web_ready(self) -> bool:
        assert self.web is not None
        assert self.web.poll() is None, f"the web process exited; see {self.logs / 'web.log'}"
        try:
            return requests.get(f"{self.base_url}/api/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def start_worker(self, name: str) -> None:
        """A prefork worker on every queue, in its own process group (so a kill takes its pool)."""
        self.workers[name] = celery_process(
            # INFO: each task received and finished, to read in the logs a failure keeps.
            *worker_args(
                QUEUES, name=f"{name}@chaos", concurrency=WORKER_CONCURRENCY, loglevel="INFO"
            ),
            env={**self.env(), "LOG_LEVEL": "INFO"},
            log=self.logs / f"{name}.log",
            own_group=True,
        )

    def kill_worker(self, name: str) -> None:
        """kill -9 the worker and its pool children at once, as a crashed host would."""
        process = self.workers.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def start_beat(self, name: str) -> None:
        """A beat process (INFO, so its log shows when it takes the scheduler lock)."""
        self.beats[name] = celery_process(
            "beat", "--loglevel", "INFO",
            env={**self.env(), "LOG_LEVEL": "INFO"},
            log=self.logs / f"{name}.log",
        )  # fmt: skip

    def beat_log(self, name: str) -> str:
        """What beat `name` has logged so far."""
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def active_beat(self) -> str | None:
        """The running beat holding the scheduler lock: the one whose latest lock event (from
        its JSON log) is the newest acquisition, if nobody lost it since."""
        latest: list[tuple[str, str, str]] = []  # (timestamp, event, beat)
        for name, process in self.beats.items():
            if process.poll() is not None:
                continue
            events = [
                (str(line["timestamp"]), str(line["event"]), name)
                for line in json_lines(self.beat_log(name))
                if line.get("event") in ("scheduler_lock_acquired", "scheduler_lock_lost")
            ]
            if events:
                latest.append(max(events))
        if not latest:
            return None
        _, event, name = max(latest)
        return name if event == "scheduler_lock_acquired" else None

    def kill_beat(self, name: str) -> None:
        """kill -9 the beat: Postgres ends its session, which frees the lock."""
        process = self.beats.pop(name)
        process.kill()
        process.wait(timeout=10)

    def restart_redis(
        self, down_seconds: float, while_down: Callable[[], object] = lambda: None
    ) -> float:
        """Stop Redis (SIGTERM: its append-only file is flushed), call while_down(), keep it down
        for down_seconds, start it again on the same port; returns when it came back."""
        self.redis.stop()
        while_down()
        time.sleep(down_seconds)
        self.redis.start()
        return time.monotonic()

    def restart_postgres(self, down_seconds: float) -> float:
        """Stop Postgres (fast: open transactions roll back), keep it down for down_seconds,
        start it again; returns when it came back (monotonic)."""
        self.postgres.stop()
        time.sleep(down_seconds)
        self.postgres.start()
        return time.monotonic()

    def restart_rabbitmq(self, down_seconds: float) -> float:
        """Stop RabbitMQ, keep it down for down_seconds, start it again; returns when it came
        back (monotonic)."""
        assert self.rabbitmq is not None
        return self.rabbitmq.restart(down_seconds)

    def broker_state(self) -> dict[str, Any]:
        """Queue lengths (and, on Redis, unacknowledged messages), for a failure's message."""
        if self.rabbitmq is not None:
            try:
                return {"queues": self.rabbitmq.depths()}
            except BrokerUnreachable as exc:
                return {"error": str(exc)}
        client = redis.Redis.from_url(self.redis.url, socket_timeout=2)
        try:
            queues = {name: client.llen(name) for name in QUEUES.split(",")}
            index = client.zrange("unacked_index", 0, -1, withscores=True)
            return {
                "queues": queues,
                "unacked_ages": [round(time.time() - score, 1) for _, score in index],
                "restore_mutex_ttl": client.ttl("unacked_mutex"),
            }
        except redis.RedisError as exc:
            return {"error": str(exc)}
        finally:
            client.close()

    def dead_processes(self) -> list[str]:
        """The names of processes that should be running but exited."""
        everyone = {"web": self.web, **self.workers, **self.beats}
        return [name for name, p in everyone.items() if p is None or p.poll() is not None]

    def close(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL), then Redis and Postgres."""
        processes = [p for p in (self.web, *self.workers.values(), *self.beats.values()) if p]
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for worker in self.workers.values():
            with contextlib.suppress(ProcessLookupError):  # pool children that outlived it
                os.killpg(worker.pid, signal.SIGKILL)
        self.redis.stop()
        self.postgres.close()
        if self.rabbitmq is not None:
            self.rabbitmq.close()


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among a log's lines (Celery's own lines are plain text)."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found
