"""Approval decisions: a signed link (`POST /api/approvals/<token>`) or the approver's own call
(`POST /api/runs/<id>/approval`) resumes a run waiting at an `approval` step, with one
conditional UPDATE, so a link is used once. docs/architecture.md, "Durable waits" (Approvals)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Literal
from uuid import UUID

from psycopg import sql
from pydantic import Field

from conveyor.db import Connection, Database
from conveyor.errors import Conflict, ConveyorError, Forbidden, InvalidInput, RunNotFound
from conveyor.events import notifications
from conveyor.events.notifications import Notification
from conveyor.payload import Payload
from conveyor.runs import children
from conveyor.runs.resume import FAIL_SET, RESUME_SET, Resumed, complete_wait, record_failed
from conveyor.steps.approval import ApprovalClaims, verify_link
from conveyor.steps.wait import WaitRequest

APPROVAL_REJECTED = "APPROVAL_REJECTED"
APPROVAL_REQUESTED = "approval_requested"
DECIDED = {"approve": "approved", "reject": "rejected"}


class ApprovalDecision(Payload):
    """The decision (in the body, or `?decision=` on a link) and an optional comment."""

    decision: Literal["approve", "reject"] | None = None
    comment: str | None = Field(default=None, max_length=2000)


class ApprovalLinkInvalid(Forbidden):
    """The link was not signed by this server (tampered with, or cut short)."""

    code = "APPROVAL_LINK_INVALID"


class NotTheApprover(Forbidden):
    """Only the approver the step names, or an admin, may decide."""

    code = "NOT_THE_APPROVER"


class ApprovalExpired(ConveyorError):
    """The approval expired before this decision: its on_timeout decided."""

    status: ClassVar[int] = 410
    code: ClassVar[str] = "APPROVAL_EXPIRED"


class ApprovalAlreadyDecided(Conflict):
    """A decision was already taken on this approval; this one changed nothing."""

    code = "APPROVAL_ALREADY_DECIDED"


class NoPendingApproval(Conflict):
    """The run is not waiting for an approval."""

    code = "RUN_NOT_WAITING"


# The step still waits for this approver's decision and has not expired. A link also names the
# expiry it was signed with, so only the link of this suspension of the step works.
_PENDING = sql.SQL(
    """  from workflow_steps w
 where r.id = %(id)s and r.status = 'waiting'
   and w.run_id = r.id and w.name = %(step)s and w.status = 'waiting'
   and w.wait ->> 'kind' = 'approval' and w.wait ->> 'approver' = %(approver)s
   and w.wake_at > now()
   and (%(expires_at)s::timestamptz is null or w.wake_at = %(expires_at)s::timestamptz)
"""
)
APPROVE_SQL = RESUME_SET + _PENDING + sql.SQL("returning r.*, w.position as wait_position")
REJECT_FAIL_SQL = (
    FAIL_SET
    + _PENDING
    + sql.SQL(" and w.wait ->> 'on_reject' = 'fail' returning r.*, w.position as wait_position")
)


def notify_approver(
    conn: Connection, run: dict[str, Any], step: str, request: WaitRequest
) -> Notification | None:
    """In the suspending transaction: the approver's notification carrying the signed links.
    Only the approver (and admins) read it under RLS, so the run's owner cannot approve their
    own run with a link; once per suspension of the step (its expiry is in the key)."""
    links = request.links()
    expires = run["wake_at"].isoformat() if run["wake_at"] else None
    return notifications.notify(
        conn,
        UUID(str(request.approver)),
        APPROVAL_REQUESTED,
        "info",
        f"Approval requested: {run['workflow_id']}, step {step}",
        request.message or f"Run {run['id']} waits for your decision until {expires}.",
        action_url=links["approve"],
        metadata={"run_id": str(run["id"]), "step": step, "expires_at": expires, **links},
        dedupe_key=f"approval:{run['id']}:{step}:{expires}",
    )


def expired_output(wait: dict[str, Any]) -> dict[str, Any]:
    """The step's output when the approval expired with on_timeout: continue."""
    return {"decision": "expired", "approver": wait.get("approver"), "comment": None,
            "decided_at": None}  # fmt: skip


def decide_by_link(db: Database, secret: str, token: str, decision: ApprovalDecision) -> Resumed:
    """Take the decision a signed link carries; the link is the credential (no JWT)."""
    claims = verify_link(secret, token)
    if claims is None:
        raise ApprovalLinkInvalid("this approval link is not valid")
    if claims.expires_at <= datetime.now(UTC):
        raise ApprovalExpired(f"this approval link expired at {claims.expires_at.isoformat()}")
    return _decide(db, claims, decision, by="link")


def decide_as_user(
    db: Database, run_id: UUID, user_id: UUID, *, is_admin: bool, decision: ApprovalDecision
) -> Resumed:
    """Take the decision of user_id (the named approver, or an admin) on run_id's approval."""
    with db.transaction() as conn:
        pending = conn.execute(
            "select name, wait, wake_at from workflow_steps where run_id = %s "
            "and status = 'waiting' and wait ->> 'kind' = 'approval'",
            (run_id,),
        ).fetchone()
        owner = conn.execute(
            "select user_id from workflow_runs where id = %s", (run_id,)
        ).fetchone()
        approver = UUID(pending["wait"]["approver"]) if pending is not None else None
        if owner is not None and user_id not in (owner["user_id"], approver) and not is_admin:
            # Neither its owner, its approver nor an admin: say no more than RLS would.
            raise RunNotFound(f"run {run_id} does not exist")
        if pending is None:
            raise _refusal(conn, run_id, None)
    assert approver is not None
    if approver != user_id and not is_admin:
        raise NotTheApprover(f"run {run_id} waits for the decision of another user")
    claims = ApprovalClaims(run_id, pending["name"], approver, pending["wake_at"])
    return _decide(db, claims, decision, by=str(user_id), check_expiry=False)


def _decide(
    db: Database,
    claims: ApprovalClaims,
    decision: ApprovalDecision,
    *,
    by: str,
    check_expiry: bool = True,
) -> Resumed:
    if decision.decision is None:
        raise InvalidInput("give `decision`: approve or reject")
    params = {
        "id": claims.run_id,
        "step": claims.step,
        "approver": str(claims.approver),
        "expires_at": claims.expires_at if check_expiry else None,
    }
    now = datetime.now(UTC).isoformat()
    output = {
        "decision": DECIDED[decision.decision],
        "approver": str(claims.approver),
        "comment": decision.comment,
        "decided_at": now,
        "decided_by": by,
    }
    with db.transaction() as conn:
        if decision.decision == "reject":
            error = f"approver {claims.approver} rejected step {claims.step!r}"
            if decision.comment:
                error += f": {decision.comment}"
            failed = conn.execute(
                REJECT_FAIL_SQL, {**params, "error": error, "code": APPROVAL_REJECTED}
            ).fetchone()
            if failed is not None:
                ended = record_failed(
                    conn,
                    failed,
                    failed["wait_position"],
                    error=error,
                    code=APPROVAL_REJECTED,
                    resumed_by="approval",
                )
                return children.with_parents(conn, failed, ended)
        run = conn.execute(APPROVE_SQL, params).fetchone()
        if run is None:
            raise _refusal(conn, claims.run_id, claims.step)
        return complete_wait(conn, run, output, resumed_by="approval")


def _refusal(conn: Connection, run_id: UUID, step: str | None) -> Exception:
    """Why a decision resumed nothing (read after the conditional UPDATE)."""
    run = conn.execute("select status from workflow_runs where id = %s", (run_id,)).fetchone()
    if run is None:
        return RunNotFound(f"run {run_id} does not exist")
    row = conn.execute(
        "select name, status, wait, wake_at <= now() as expired from workflow_steps "
        "where run_id = %s and wait ->> 'kind' = 'approval' and (%s::text is null or name = %s) "
        "order by (status = 'waiting') desc, position limit 1",
        (run_id, step, step),
    ).fetchone()
    if row is not None:
        wait: dict[str, Any] = row["wait"] or {}
        name = row["name"]
        if wait.get("resumed_by") == "timeout" or (row["status"] == "waiting" and row["expired"]):
            return ApprovalExpired(f"the approval of step {name!r} expired", step=name)
        if wait.get("resumed_by") == "approval":
            return ApprovalAlreadyDecided(
                f"a decision was already taken on step {name!r} of run {run_id}", step=name
            )
    return NoPendingApproval(
        f"run {run_id} is not waiting for an approval (it is {run['status']})",
        status=run["status"],
    )
