"""The web app and a worker as separate processes on the bench's services, as production runs
them: the app under gunicorn (gthread workers, like `conveyor run`), the worker under Celery."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.harness import BENCH_SECRET, Bench, process_env, stop_processes, wait_until
from conveyor.cli.services import free_port

REPO = Path(__file__).resolve().parent.parent
WEB_WORKERS = 2  # `conveyor run`'s default
WEB_THREADS = 8


@dataclass
class AppProcesses:
    """The running web and worker processes."""

    base_url: str
    web: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]


@contextmanager
def app_processes(
    bench: Bench, *, queues: str, concurrency: int, env: dict[str, str]
) -> Iterator[AppProcesses]:
    """The web app (gunicorn, WEB_WORKERS x WEB_THREADS) on a loopback port and a worker on
    queues (solo for concurrency 1, else prefork), with env added to the bench's settings."""
    port = free_port()
    child_env = process_env(
        bench.db.url,
        bench.redis_url,
        BENCH_SECRET,
        Path(tempfile.mkdtemp(prefix="conveyor-bench-app-")),
        **env,
    )
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "web:create_app()", "--bind", f"127.0.0.1:{port}",
         "--workers", str(WEB_WORKERS), "--worker-class", "gthread", "--threads", str(WEB_THREADS),
         "--log-level", "warning"],
        env=child_env, cwd=REPO, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.app", "worker", *pool_args(concurrency),
         "--queues", queues, "--loglevel", "WARNING", "--without-mingle", "--without-gossip"],
        env=child_env, cwd=REPO, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: web_ready(base_url, web))
        yield AppProcesses(base_url, web, worker)
    finally:
        worker.send_signal(signal.SIGCONT)  # a paused worker cannot terminate
        stop_processes(web, worker)


def pool_args(concurrency: int) -> list[str]:
    """One process (solo pool, like the other benches) or a prefork pool, as production runs."""
    if concurrency == 1:
        return ["--pool", "solo"]
    return ["--pool", "prefork", "--concurrency", str(concurrency)]


def web_ready(base_url: str, web: subprocess.Popen[bytes]) -> bool:
    """Whether the web process answers its health check (SystemExit if it died)."""
    if web.poll() is not None:
        raise SystemExit("bench: the web process exited")
    try:
        return requests.get(f"{base_url}/api/health", timeout=2).status_code == 200
    except (requests.ConnectionError, requests.Timeout):
        return False  # not listening yet, or still starting its workers
