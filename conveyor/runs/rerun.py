"""Rerun and fork: a new run of a finished run's workflow from one of its steps on, the steps
before it reused from the old run's checkpoints (docs/architecture.md, "Rerun and fork")."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any
from uuid import UUID

import structlog
from psycopg.types.json import Jsonb

from conveyor import workflows
from conveyor.db import Connection, Database
from conveyor.errors import BadRequest, Conflict, IdempotencyKeyReused, RunNotFound, UnknownWorkflow
from conveyor.runs.artifacts import ArtifactStore
from conveyor.runs.fingerprints import step_fingerprint
from conveyor.runs.payloads import FINAL_STATUSES
from conveyor.runs.store import NewRun, create_run
from conveyor.runs.supabase_storage import StorageUnavailable
from conveyor.runs.views import require_visible
from conveyor.workflows.definitions import Workflow

log = structlog.get_logger(__name__)


class UnknownStep(BadRequest):
    """from_step names no step of the workflow."""

    code = "UNKNOWN_STEP"


class RunInFlight(Conflict):
    """The run has not finished; rerun it once it has (or cancel it first)."""

    code = "RUN_IN_FLIGHT"


class DefinitionChanged(Conflict):
    """A step that would be reused is no longer defined the way that made its output."""

    code = "DEFINITION_CHANGED"


class StepNotReusable(Conflict):
    """A step before from_step did not complete in the old run, so there is nothing to reuse."""

    code = "STEP_NOT_REUSABLE"


@dataclass(frozen=True)
class Rerun:
    """A rerun as started: the new run, and whose it is (the old run's owner)."""

    run: NewRun
    owner: UUID


@dataclass(frozen=True)
class _OldRun:
    id: UUID
    user_id: UUID
    status: str
    workflow_id: str
    input: dict[str, Any]
    metadata: dict[str, Any]
    webhook_url: str | None
    steps: list[dict[str, Any]]


def rerun(
    db: Database,
    store: ArtifactStore,
    claims: dict[str, Any],
    run_id: UUID,
    *,
    from_step: str,
    inputs: dict[str, Any] | None,
    idempotency_key: str | None,
) -> Rerun:
    """Start a new run of run_id's workflow from from_step, admitted like a submit, with the
    earlier steps' checkpoints copied; inputs (if given) replace the old run's. Not published."""
    # RLS decides who may: the owner or an admin; anyone else gets 404, as for a missing run.
    require_visible(db, claims, run_id)
    old = _read(db, run_id)
    if old.status not in FINAL_STATUSES:
        raise RunInFlight(f"run {run_id} is still {old.status}; rerun it once it has finished")
    definition = _definition(old.workflow_id)
    hashes = _reusable(definition, old, from_step)
    new_inputs = old.input if inputs is None else inputs
    definition.validate_input(new_inputs)
    run = create_run(
        db,
        user_id=old.user_id,
        kind=definition.kind,
        workflow_id=definition.name,
        input=new_inputs,
        metadata=old.metadata,
        steps=definition.step_rows(),
        idempotency_key=idempotency_key,
        admit=True,
        webhook_url=old.webhook_url,
        prepare=partial(_copy_checkpoints, old_id=run_id, from_step=from_step, hashes=hashes),
    )
    if not run.created:
        _require_same_rerun(db, run.id, run_id, from_step, idempotency_key)
    # Also on a retry: one that failed, or a web process that died, left references to copy.
    copy_stored_outputs(db, store, run.id)
    return Rerun(run, old.user_id)


def _read(db: Database, run_id: UUID) -> _OldRun:
    with db.transaction() as conn:
        row = conn.execute(
            "select id, user_id, status, workflow_id, input, metadata, webhook_url "
            "from workflow_runs where id = %s",
            (run_id,),
        ).fetchone()
        if row is None:
            raise RunNotFound(f"run {run_id} does not exist")
        steps = conn.execute(
            "select position, name, status, spec_hash from workflow_steps "
            "where run_id = %s order by position",
            (run_id,),
        ).fetchall()
    return _OldRun(**row, steps=steps)


def _definition(workflow_id: str) -> Workflow:
    try:
        return workflows.get(workflow_id)
    except UnknownWorkflow:
        raise DefinitionChanged(
            f"workflow {workflow_id!r} is no longer defined; there is nothing to rerun"
        ) from None


def _reusable(definition: Workflow, old: _OldRun, from_step: str) -> list[str]:
    """The fingerprints of the steps to reuse (those before from_step in run order), after
    checking that the old run completed each and the definition still makes it the same way."""
    names = [spec.name for spec in definition.steps]
    if from_step not in names:
        raise UnknownStep(
            f"{definition.name!r} has no step {from_step!r}; its steps, in run order: "
            f"{', '.join(names)}"
        )
    hashes: list[str] = []
    for position, spec in enumerate(definition.steps[: names.index(from_step)]):
        stored = old.steps[position] if position < len(old.steps) else None
        fingerprint = step_fingerprint(spec)
        if stored is None or stored["name"] != spec.name:
            raise DefinitionChanged(
                f"the steps of {definition.name!r} changed since run {old.id}; step "
                f"{spec.name!r} cannot be reused: rerun from an earlier step, or from the first"
            )
        if stored["status"] != "completed":
            raise StepNotReusable(
                f"step {spec.name!r} did not complete in run {old.id} ({stored['status']}); "
                f"rerun from {spec.name!r} or an earlier step"
            )
        if stored["spec_hash"] != fingerprint:
            why = "was recorded before" if stored["spec_hash"] is None else "changed since"
            raise DefinitionChanged(
                f"step {spec.name!r} of {definition.name!r} {why} run {old.id}'s checkpoint, "
                f"so its output cannot be reused: rerun from {spec.name!r} or an earlier step"
            )
        hashes.append(fingerprint)
    return hashes


def _copy_checkpoints(
    conn: Connection, new_id: UUID, *, old_id: UUID, from_step: str, hashes: list[str]
) -> None:
    """In create_run's transaction: link the new run to the old one and mark its first steps
    completed with the old checkpoints. The old run row is locked `for key share`, so it cannot be
    deleted (erasure locks it `for update`) between the checks above and the copy."""
    found = conn.execute(
        "select 1 from workflow_runs where id = %s for key share", (old_id,)
    ).fetchone()
    if found is None:
        raise RunNotFound(f"run {old_id} does not exist")
    conn.execute(
        "update workflow_runs set rerun_of = %s, rerun_from_step = %s where id = %s",
        (old_id, from_step, new_id),
    )
    copied = conn.execute(
        """
        update workflow_steps n
           set status = 'completed', output = o.output, output_url = o.output_url,
               spec_hash = o.spec_hash, reused_from = coalesce(o.reused_from, o.run_id),
               started_at = o.started_at, finished_at = o.finished_at
          from workflow_steps o
         where n.run_id = %(new)s and o.run_id = %(old)s and o.position = n.position
           and n.position < %(count)s and o.name = n.name and o.status = 'completed'
           and o.spec_hash = (%(hashes)s::text[])[n.position + 1]
        returning n.position
        """,
        {"new": new_id, "old": old_id, "count": len(hashes), "hashes": hashes},
    ).fetchall()
    if len(copied) != len(hashes):
        # The checks above passed on a read before this transaction; a finished run's steps do
        # not change, so only a concurrent deletion of its rows gets here.
        raise StepNotReusable(f"the checkpoints of run {old_id} changed; try again")


def _require_same_rerun(
    db: Database, new_id: UUID, old_id: UUID, from_step: str, key: str | None
) -> None:
    """The run an Idempotency-Key returned must be this same rerun, not a submit or another."""
    with db.transaction() as conn:
        row = conn.execute(
            "select rerun_of, rerun_from_step from workflow_runs where id = %s", (new_id,)
        ).fetchone()
    if row is None or (row["rerun_of"], row["rerun_from_step"]) != (old_id, from_step):
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was already used for run {new_id} with a different "
            "request; use a new key for a new run."
        )


def copy_stored_outputs(db: Database, store: ArtifactStore, run_id: UUID) -> int:
    """Copy the stored objects of run_id's reused steps into its own folder and repoint the rows,
    so deleting the old run later does not take them. A Storage failure leaves the reference
    (valid while the old run exists) and is logged. How many were copied."""
    with db.transaction() as conn:
        rows = conn.execute(
            "select position, name, output_url from workflow_steps "
            "where run_id = %s and reused_from is not null and output_url is not null",
            (run_id,),
        ).fetchall()
    copied = 0
    for row in rows:
        if f"/{run_id}/" in row["output_url"]:
            continue  # copied by an earlier call
        try:
            data = store.get(row["output_url"])
            # Attempt 0 is never a claim's: no execution of this run writes this key.
            url = store.put(f"{run_id}/0/{row['name']}.json", data)
        except (StorageUnavailable, OSError, ValueError) as exc:
            log.warning(
                "rerun_output_not_copied", run_id=str(run_id), step=row["name"], error=str(exc)
            )
            continue
        with db.transaction() as conn:
            conn.execute(
                "update workflow_steps set output_url = %s, output = %s "
                "where run_id = %s and position = %s and output_url = %s",
                (
                    url,
                    Jsonb({"stored_at": url, "bytes": len(data)}),
                    run_id,
                    row["position"],
                    row["output_url"],
                ),
            )
        copied += 1
    return copied
