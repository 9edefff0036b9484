"""The chaos table: one row per fault, printed after each test and again at the end."""

from __future__ import annotations

from dataclasses import dataclass

from tests.chaos.check import Outcome


@dataclass
class Row:
    """What one fault did to the system and how it came back."""

    fault: str
    outcome: Outcome
    recovery_seconds: float  # fault restored (or kill) -> a new run completed end to end
    settled_seconds: float  # load stopped -> everything accepted applied
    answered_503: int
    unexpected_5xx: int
    note: str = ""


RESULTS: list[Row] = []

LEGEND = """\
handed on: accepted runs claimed more than once (their worker died or lost Postgres mid-run).
events lost: accepted usage events and webhooks never applied; duplicates applied: usage events,
credit grants, completed steps or final statuses applied twice; ledger off: users whose period
totals or balance differ from the clients' own count. 503s / other 5xx: answers the clients got.
recovery s: from the fault's end (restart done, or the kill) until a newly submitted run
completed end to end; settled s: from the end of the load until everything accepted was applied."""

HEADER = (
    "fault", "runs accepted", "completed", "failed", "unfinished", "handed on", "usage events",
    "webhooks", "events lost", "duplicates applied", "ledger off", "503s", "other 5xx",
    "recovery s", "settled s",
)  # fmt: skip


def cells(row: Row) -> tuple[str, ...]:
    """A row's printed values, in HEADER's order."""
    o = row.outcome
    return (
        row.fault, str(o.runs_accepted), str(o.completed), str(o.failed), str(o.unfinished),
        str(o.handed_on), str(o.usage_accepted), str(o.webhooks_accepted), str(o.lost),
        str(o.duplicates), str(o.ledger_mismatch), str(row.answered_503),
        str(row.unexpected_5xx), f"{row.recovery_seconds:.1f}", f"{row.settled_seconds:.1f}",
    )  # fmt: skip


def table(rows: list[Row]) -> str:
    """The rows as an aligned text table, notes underneath."""
    lines = [HEADER, *(cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    text = [
        " | ".join(value.rjust(w) for value, w in zip(line, widths, strict=True)) for line in lines
    ]
    text.insert(1, "-+-".join("-" * w for w in widths))
    text.extend(f"{row.fault}: {row.note}" for row in rows if row.note)
    return "\n".join(text)
