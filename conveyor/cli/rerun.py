"""`conveyor rerun RUN_ID --from STEP [--inputs JSON] [--follow]`: a new run of a finished run
from one of its steps on, the earlier steps reused (POST /api/runs/<id>/rerun)."""

from __future__ import annotations

import json
import sys

import click

from conveyor.cli.submit import follow_run, post
from conveyor.settings import get_settings


@click.command("rerun")
@click.argument("run_id")
@click.option("--from", "from_step", required=True, help="The first step to run again.")
@click.option("--inputs", "raw_inputs", default=None, help="New inputs as JSON (a fork).")
@click.option("--follow/--no-follow", default=False, help="Stream events until the run ends.")
@click.option("--url", default=None, help="API base URL (default: http://WEB_HOST:WEB_PORT).")
@click.option(
    "--token",
    envvar="CONVEYOR_TOKEN",
    required=True,
    help="The run owner's (or an admin's) access token (default: CONVEYOR_TOKEN).",
)
def rerun(
    run_id: str, from_step: str, raw_inputs: str | None, follow: bool, url: str | None, token: str
) -> None:
    """Rerun RUN_ID from step --from, reusing the steps before it; print the new run's id, or
    with --follow its events until it ends (exit 1 unless it completed)."""
    body: dict[str, object] = {"from_step": from_step}
    if raw_inputs is not None:
        try:
            body["inputs"] = json.loads(raw_inputs)
        except ValueError as exc:
            raise click.UsageError(f"--inputs is not JSON: {exc}") from exc
    settings = get_settings()
    base = (url or f"http://{settings.web_host}:{settings.web_port}").rstrip("/")
    status, answer = post(
        f"{base}/api/runs/{run_id}/rerun", body, {"Authorization": f"Bearer {token}"}
    )
    if status not in (200, 202):
        raise click.ClickException(
            f"{status} {answer.get('code', '')}: {answer.get('error', answer)}"
        )
    click.echo(f"run {answer['id']} {answer['status']} (rerun of {run_id} from {from_step})")
    if follow:
        final = follow_run(base, token, answer["id"])
        sys.exit(0 if final == "completed" else 1)
