"""Conveyor spread over hosts (network namespaces, tests/multihost/network.py): Postgres, Redis
and (for the RabbitMQ round) a RabbitMQ node on a `db` host; web-a, web-b, worker-a, worker-b and
beat each on its own; an `ops` host where `conveyor migrate` and `conveyor status` run; Supabase
Storage (the fake) in the test process on the bridge's .1 address (and a second address, for
web-b). Every Conveyor process gets its own empty temporary folder (network.HOST_TMP), where its
data, metrics and home directories live; only the code (the repository and its venv) is shared.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests
from werkzeug.serving import make_server

from conveyor.cli.main import gunicorn_command
from conveyor.cli.services import APP_DATABASE, ensure_database, redis_server_binary
from tests.fake_storage import StorageServer
from tests.multihost.network import HOST_TMP as HOST_TMP_PATH
from tests.multihost.network import Host, Network
from tests.support import API_SECRET, JWT_SECRET, REPO, token_for, worker_args

TMP_PREFIX = "cvmh-"  # the test's folder: TMP_PREFIX + the network's suffix + "-…"
STORAGE_KEY = "multihost-service-role-key"
BUCKET = "conveyor-artifacts"
METRICS_TOKEN = "multihost-metrics-token"
POSTGRES_PORT = 5432
REDIS_PORT = 6379
AMQP_PORT = 5672
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # the Debian package's, unwrapped
RABBITMQ_USER = "rabbitmq"
BROKERS = ("redis", "rabbitmq")
WEB_PORT = 8000
WORKER_METRICS_PORT = 9100
POSTGRES_USER = "pgserver"  # pgserver's unprivileged account: postgres refuses to run as root
QUEUES = "runs,usage,webhooks,maintenance"
WEBS = ("web-a", "web-b")  # two web hosts, as behind a load balancer
WORKERS = ("worker-a", "worker-b")
BEATS = ("beat-a", "beat-b")  # one holds the scheduler lock, the other stands by
LOCK_TAKEN = "scheduler_lock_acquired"  # what a beat logs when it takes the scheduler lock
STARTUP_SECONDS = 60.0
# A host's own temporary folder: a tmpfs mounted in its mount namespace (network.HOST_SETUP).
HOST_TMP = str(HOST_TMP_PATH)
DATA_DIR, METRICS_DIR, HOME_DIR = (f"{HOST_TMP}/{name}" for name in ("conveyor", "metrics", "home"))


class BridgeStorage(StorageServer):
    """The fake Supabase Storage, listening on bridge addresses instead of loopback (one object
    store, reachable at each address; `url` is at the first)."""

    def __init__(self, service_key: str, *hosts: str) -> None:
        self.service_key = service_key
        self.buckets = {}
        self.objects = {}
        self.requests = []
        self.failures_left = 0
        self.down = False
        self.lock = threading.Lock()
        self.server = make_server(hosts[0], 0, self.app, threaded=True)
        port = self.server.server_port
        self.others = [make_server(host, port, self.app, threaded=True) for host in hosts[1:]]
        self.urls = [f"http://{host}:{port}" for host in hosts]
        self.url = self.urls[0]
        for server in (self.server, *self.others):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving on every address."""
        for server in self.others:
            server.shutdown()
            server.server_close()
        super().close()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """condition()'s first truthy value, polled every 0.2 s; fails naming what did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout} s")


class Cluster:
    """Everything running, reachable only over the bridge. close() stops it all."""

    def __init__(self, network: Network, broker: str = "redis") -> None:
        self.network = network
        self.broker = broker
        # Where the test keeps Postgres's and Redis's data and every process's log.
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{network.suffix}-"))
        self.tmp.chmod(0o755)  # Postgres's account must reach its data dir under it
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.db_host = network.add_host("db", private_tmp=False)
        self.web_hosts = {name: network.add_host(name) for name in WEBS}
        self.worker_hosts = {name: network.add_host(name) for name in WORKERS}
        self.beat_hosts = {name: network.add_host(name) for name in BEATS}
        self.ops_host = network.add_host("ops")  # where an operator runs the CLI
        self.database_url = (
            f"postgresql://postgres@{self.db_host.address}:{POSTGRES_PORT}/{APP_DATABASE}"
        )
        self.redis_url = f"redis://{self.db_host.address}:{REDIS_PORT}/0"
        self.broker_url = (
            f"amqp://guest:guest@{self.db_host.address}:{AMQP_PORT}//"
            if broker == "rabbitmq"
            else self.redis_url
        )
        self.web_urls = {
            name: f"http://{host.address}:{WEB_PORT}" for name, host in self.web_hosts.items()
        }
        self.web_url = self.web_urls[WEBS[0]]
        # Empty: `conveyor migrate` on the ops host makes the bucket, as in a deploy. web-b
        # reaches it at a second address, as a host on another network reaches one Supabase
        # project by another URL (an internal endpoint, a custom domain).
        self.storage_elsewhere = network.add_gateway_address()
        self.storage = BridgeStorage(STORAGE_KEY, network.gateway, self.storage_elsewhere)
        self.storage_url_for = {WEBS[1]: self.storage.urls[1]}

    # --- Postgres, Redis and RabbitMQ on the db host ------------------------------------------

    def start_postgres(self) -> None:
        """initdb (as Postgres's account), trust the bridge's subnet, serve on the db host."""
        from pgserver._commands import POSTGRES_BIN_PATH

        data = self.tmp / "pg"
        data.mkdir(mode=0o700)
        shutil.chown(data, POSTGRES_USER, POSTGRES_USER)
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(data), "-U", "postgres",
             "--auth=trust", "--encoding=utf8"],
            user=POSTGRES_USER, capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.network.subnet} trust\n")
        self.db_host.start(
            [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(data),
             "-h", self.db_host.address, "-p", str(POSTGRES_PORT), "-k", str(data),
             "-c", "fsync=off", "-c", "max_connections=200"],
            env=plain_env(), log=self.logs / "postgres.log", cwd=self.tmp, user=POSTGRES_USER,
        )  # fmt: skip
        admin_url = f"postgresql://postgres@{self.db_host.address}:{POSTGRES_PORT}/postgres"
        wait_for(lambda: answers(admin_url), STARTUP_SECONDS, "Postgres answering on the bridge")
        ensure_database(admin_url, APP_DATABASE)

    def migrate(self) -> None:
        """The deploy's first step, `conveyor migrate`, from the ops host: the schema over the
        bridge, and the artifacts bucket in Storage."""
        result = self.run_cli("migrate", timeout=120)
        assert result.returncode == 0, f"conveyor migrate: {result.stdout}{result.stderr}"
        assert BUCKET in self.storage.buckets, f"no bucket after migrate: {result.stdout}"

    def start_redis(self) -> None:
        """redis-server bound to the db host's address only."""
        data = self.tmp / "redis"
        data.mkdir()
        self.db_host.start(
            [redis_server_binary(), "--bind", self.db_host.address, "--port", str(REDIS_PORT),
             "--dir", str(data), "--save", "", "--appendonly", "no",
             # Protected mode refuses non-loopback clients without a password; this one's only
             # clients are the test's hosts.
             "--protected-mode", "no"],
            env=plain_env(), log=self.logs / "redis.log", cwd=self.tmp,
        )  # fmt: skip
        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=0.5)
        try:
            wait_for(lambda: pings(client), STARTUP_SECONDS, "Redis answering on the bridge")
        finally:
            client.close()

    def start_rabbitmq(self) -> None:
        """A RabbitMQ node of the test's own on the db host, listening on its address only; guest
        may log in from other hosts (its default is loopback only)."""
        base = self.tmp / "rabbitmq"
        for folder in ("home", "mnesia", "log"):
            (base / folder).mkdir(parents=True)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {self.db_host.address}:{AMQP_PORT}\nloopback_users = none\n"
        )
        for path in (base, *base.rglob("*")):
            shutil.chown(path, RABBITMQ_USER, RABBITMQ_USER)
        env = {
            **plain_env(),
            "HOME": str(base / "home"),  # its Erlang cookie
            "RABBITMQ_NODENAME": "rabbit@localhost",
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        }
        self.db_host.start(
            [str(RABBITMQ_SERVER)], env=env, log=self.logs / "rabbitmq.log", cwd=base,
            user=RABBITMQ_USER,
        )  # fmt: skip
        wait_for(
            partial(amqp_answers, self.db_host.address, AMQP_PORT),
            STARTUP_SECONDS,
            "RabbitMQ answering on the bridge",
        )

    # --- Conveyor's processes -------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        """What web, workers and beat run with: the bridge addresses, the Storage settings, and
        paths only inside the host's own /tmp."""
        return {
            **plain_env(),
            "HOME": HOME_DIR,
            "TMPDIR": HOST_TMP,
            # As a deploy runs: a missing secret stops the process instead of one made per host.
            "CONVEYOR_ENV": "production",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "BROKER_URL": self.broker_url,
            "SUPABASE_JWT_SECRET": JWT_SECRET,
            "API_JWT_SECRET": API_SECRET,
            "SUPABASE_URL": self.storage.url,
            "SUPABASE_SERVICE_ROLE_KEY": STORAGE_KEY,
            "METRICS_TOKEN": METRICS_TOKEN,
            "CONVEYOR_DATA_DIR": DATA_DIR,
            "PROMETHEUS_MULTIPROC_DIR": METRICS_DIR,
            "CONVEYOR_WORKFLOW_MODULES": "tests.workflows_for_tests",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            **extra,
        }

    def start_conveyor(self, host: Host, argv: list[str], name: str, **extra: str) -> None:
        """argv on host, after making its directories in the host's empty /tmp."""
        host.start(
            self.in_host(argv),
            env=self.env(**extra), log=self.logs / f"{name}.log", cwd=REPO,
        )  # fmt: skip

    @staticmethod
    def in_host(argv: list[str]) -> list[str]:
        """argv, once the directories it is configured with exist in the host's empty /tmp."""
        prepare = f'mkdir -p {DATA_DIR} {METRICS_DIR} {HOME_DIR} && exec "$@"'
        return ["sh", "-c", prepare, "sh", *argv]

    def start_web(self) -> None:
        """`conveyor run`'s gunicorn command on each web host, bound to its address."""
        for name, host in self.web_hosts.items():
            command = gunicorn_command(
                sys.executable, host=host.address, port=WEB_PORT, workers=2, threads=8
            )
            extra = {"SUPABASE_URL": self.storage_url_for.get(name, self.storage.url)}
            self.start_conveyor(host, shlex.split(command), name, **extra)

    def start_workers(self) -> None:
        """A prefork worker on every queue per worker host, named by Celery from its hostname."""
        for name, host in self.worker_hosts.items():
            argv = [sys.executable, "-m", "celery", "-A", "worker.app",
                    *worker_args(QUEUES, concurrency=2, loglevel="INFO")]  # fmt: skip
            self.start_conveyor(host, argv, name, WORKER_METRICS_PORT=str(WORKER_METRICS_PORT))

    def start_beats(self) -> None:
        """Celery beat with Conveyor's scheduler on each beat host."""
        argv = [sys.executable, "-m", "celery", "-A", "worker.app", "beat", "--loglevel", "INFO"]
        for name, host in self.beat_hosts.items():
            self.start_conveyor(host, argv, name)

    def beats_holding_the_lock(self) -> list[str]:
        """The beats that logged taking the scheduler lock."""
        return [name for name in BEATS if LOCK_TAKEN in self.log(name)]

    def wait_until_serving(self) -> None:
        """Web answers its health check and both workers' heartbeats are in Redis."""
        for url in self.web_urls.values():
            wait_for(partial(self.healthy, url), STARTUP_SECONDS, f"web answering at {url}")
        expected = {self.worker_name(name) for name in WORKERS}
        wait_for(
            lambda: expected <= set(self.live_workers()),
            STARTUP_SECONDS,
            f"heartbeats of {sorted(expected)}",
        )

    def healthy(self, web_url: str) -> bool:
        """Whether the web host at web_url answers its health check (every process still up)."""
        self.assert_running()
        try:
            return requests.get(f"{web_url}/api/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def live_workers(self) -> list[str]:
        """The hostnames GET /api/admin/queues lists as live workers."""
        admin = {"Authorization": f"Bearer {token_for(uuid.uuid4(), admin=True)}"}
        response = requests.get(f"{self.web_url}/api/admin/queues", headers=admin, timeout=5)
        if response.status_code != 200:
            return []
        return [worker["hostname"] for worker in response.json()["workers"]]

    def worker_name(self, name: str) -> str:
        """The Celery node name a worker takes from its host's hostname (celery@%h)."""
        return f"celery@{self.worker_hosts[name].hostname}"

    def assert_running(self) -> None:
        """Fail naming the log of any process that exited."""
        for host in self.network.hosts.values():
            for process in host.processes:
                if process.poll() is not None:
                    raise AssertionError(
                        f"a process on {host.hostname} exited ({process.returncode}): "
                        f"{process.args!r}; logs in {self.logs}"
                    )

    def run_cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """`conveyor <args>` on the ops host, as an operator would run it there."""
        argv = self.in_host([sys.executable, "-m", "conveyor", *args])
        return self.ops_host.run(argv, env=self.env(), cwd=REPO, timeout=timeout)

    def log(self, name: str) -> str:
        """What a process (web-a, worker-b, beat-a, postgres, redis, …) has logged so far."""
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def close(self, *, keep_logs: bool) -> None:
        """Stop every host, Storage and the network; delete the data unless keep_logs."""
        try:
            self.network.close()
        finally:
            self.storage.close()
            if keep_logs:
                print(f"\nmultihost: logs kept in {self.logs}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)


def plain_env() -> dict[str, str]:
    """A minimal environment: nothing of the test's own (TEST_*_URL, a developer's .env) leaks."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


def answers(url: str) -> bool:
    """Whether Postgres at url accepts a connection."""
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def amqp_answers(host: str, port: int) -> bool:
    """Whether host:port speaks AMQP 0-9-1: it answers the protocol header with a method frame
    (Connection.Start). The workers' heartbeats show they also logged in."""
    try:
        with socket.create_connection((host, port), timeout=2) as conn:
            conn.sendall(b"AMQP\x00\x00\x09\x01")
            return conn.recv(1) == b"\x01"
    except OSError:
        return False


def pings(client: redis.Redis) -> bool:
    """Whether Redis answers PING."""
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
