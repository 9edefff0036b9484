"""The run lifecycle: create, claim with a lease, execute step by step, checkpoint, finish, reap;
stored outputs; views."""

from conveyor.runs.store import (
    ClaimedRun,
    Outcome,
    cancel_run,
    claim_run,
    create_run,
    finish_run,
    status_data,
)

__all__ = [
    "ClaimedRun",
    "Outcome",
    "cancel_run",
    "claim_run",
    "create_run",
    "finish_run",
    "status_data",
]
