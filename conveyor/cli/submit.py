"""`conveyor submit WORKFLOW --input '{...}' [--follow]`: submit a run over the HTTP API and
follow its events over the workflows websocket, with a progress bar, until it ends; a streamed
`llm` step's text is printed as it arrives. Without
--url, a DATABASE_URL that is not migrated is refused first (exit 2)."""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
import httpx
import simple_websocket  # type: ignore[import-untyped]

from conveyor.auth.tokens import mint_token
from conveyor.cli.backing import require_migrated
from conveyor.runs.payloads import FINAL_STATUSES
from conveyor.settings import get_settings
from conveyor.steps.llm_stream import STEP_TOKENS, STEP_TOKENS_DISCARDED

FOLLOW_LIMIT_SECONDS = 24 * 3600  # a follow ends by then even if the run has not
BAR_WIDTH = 30


@click.command("submit")
@click.argument("workflow")
@click.option("--input", "raw_input", default="{}", help="The run's inputs as JSON.")
@click.option("--follow/--no-follow", default=False, help="Stream events until the run ends.")
@click.option("--url", default=None, help="API base URL (default: http://WEB_HOST:WEB_PORT).")
@click.option(
    "--token",
    envvar="CONVEYOR_TOKEN",
    default=None,
    help="Access token (default: CONVEYOR_TOKEN, else a development token for a new user).",
)
def submit(workflow: str, raw_input: str, follow: bool, url: str | None, token: str | None) -> None:
    """Submit WORKFLOW (a workflow id or an agent type) with --input; print the run id, or with
    --follow its events and a progress bar until it ends (exit 1 unless it completed)."""
    try:
        inputs = json.loads(raw_input)
    except ValueError as exc:
        raise click.UsageError(f"--input is not JSON: {exc}") from exc
    settings = get_settings()
    if url is None and settings.database_url is not None:
        # The local API serves this DATABASE_URL: an unmigrated one would fail every request.
        # (Another --url is a server whose database is not known here; nothing to check. One
        # this machine cannot reach is left to the API to report.)

        require_migrated(settings.database_url, unreachable_ok=True)
    base = (url or f"http://{settings.web_host}:{settings.web_port}").rstrip("/")
    token = token or mint_token(
        uuid.uuid4(), secret=settings.jwt_secret(), audience=settings.jwt_audience
    )
    headers = {"Authorization": f"Bearer {token}"}
    status, body = post(
        f"{base}/api/agents/workflows/execute",
        {"workflow_id": workflow, "inputs": inputs, "async": True},
        headers,
    )
    if status == 404 and body.get("code") == "UNKNOWN_WORKFLOW":
        # Not a workflow: maybe an agent type (`GET /api/agents`), run as a one-step run.
        status, body = post(
            f"{base}/api/agents/invoke", {"agent_type": workflow, "input": inputs}, headers
        )
        if body.get("code") == "UNKNOWN_AGENT":
            raise click.ClickException(
                f"no workflow or agent type named {workflow!r} (GET /api/workflows and "
                "GET /api/agents list them)"
            )
    if status not in (200, 202):
        raise click.ClickException(f"{status} {body.get('code', '')}: {body.get('error', body)}")
    run_id = body.get("workflow_run_id") or body["request_id"]
    click.echo(f"run {run_id} {body['status']}")
    if follow:
        final = follow_run(base, token, run_id)
        sys.exit(0 if final == "completed" else 1)


def post(url: str, payload: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST JSON; the status and the JSON body (the text as `error` when it is not JSON)."""
    try:
        response = httpx.post(url, json=payload, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from exc
    if not response.headers.get("content-type", "").startswith("application/json"):
        return response.status_code, {"error": response.text[:200]}
    return response.status_code, response.json()


def follow_run(base: str, token: str, run_id: str) -> str:
    """Print the run's events as they arrive (resuming after a dropped connection with the last
    seq seen); returns the final status."""
    scheme, netloc, _, _, _ = urlsplit(base)
    ws_url = urlunsplit(
        ("wss" if scheme == "https" else "ws", netloc, "/api/ws/workflows", f"token={token}", "")
    )
    # From the run's first event: tokens streamed before the socket opened are replayed too.
    last_seq = 0
    view = FollowView()
    deadline = time.monotonic() + FOLLOW_LIMIT_SECONDS
    while time.monotonic() < deadline:
        try:
            socket = simple_websocket.Client.connect(ws_url)
        except (OSError, simple_websocket.ConnectionError) as exc:
            raise click.ClickException(f"cannot open {ws_url.split('?')[0]}: {exc}") from exc
        try:
            topic = f"workflow_run:{run_id}"
            socket.send(json.dumps({"type": "subscribe", "topic": topic, "since": last_seq}))
            while True:
                message = json.loads(socket.receive(timeout=60) or "null")
                if message is None or message.get("type") != "event":
                    if message and message.get("type") == "error":
                        raise click.ClickException(f"{message['code']}: {message['message']}")
                    continue
                last_seq = max(last_seq, int(message["seq"]))
                status = view.show(message)
                if status in FINAL_STATUSES:
                    click.echo()
                    return status
        except simple_websocket.ConnectionClosed:
            time.sleep(1)  # resume with `since`: nothing is missed or repeated
        finally:
            socket.close()
    raise click.ClickException("stopped following: the run did not end in time")


class FollowView:
    """Prints events: the progress bar redrawn in place on one line, streamed text as it comes on
    lines of its own (the bar moves below it rather than overwrite it)."""

    def __init__(self) -> None:
        self.in_text = False  # the cursor is at the end of streamed text, not on the bar

    def show(self, message: dict[str, Any]) -> str | None:
        """Print one event; returns the run's status when the event carries one."""
        data = message.get("data") or {}
        event = message.get("event")
        if event == STEP_TOKENS:
            if not self.in_text:
                click.echo()  # leave the bar's line as it is
                self.in_text = True
            click.echo(str(data.get("text", "")), nl=False)
            return None
        self.end_text()
        if event == STEP_TOKENS_DISCARDED:
            click.echo(
                f"\n  [step {data.get('step')}: attempt {data.get('attempt')} was cut off; "
                f"its {data.get('chars')} characters above are void, retrying]"
            )
            return None
        if event != "workflow_status_update":
            click.echo(f"\n  {event}: {json.dumps(data)[:200]}")
            return None
        progress = float(data.get("progress") or 0.0)
        filled = int(progress * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        step = data.get("step") or ""
        click.echo(f"\r[{bar}] {progress:4.0%} {data.get('status', ''):<10} {step:<24}", nl=False)
        status = data.get("status")
        return str(status) if status else None

    def end_text(self) -> None:
        """End the streamed text's line before anything else is printed."""
        if self.in_text:
            click.echo()
            self.in_text = False
