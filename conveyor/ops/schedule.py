"""When periodic jobs are due, and which period each run is for.

A job has a cadence (every N seconds, hourly, daily, monthly, in the configured timezone). At any
moment its *last due time* names a period (`2026-11` for a monthly job, `2026-11-23` for a daily
one); the dispatcher sends the job for that period unless `maintenance_runs` shows it done or in
progress. Firing on time and catching up after downtime are therefore the same rule: a period is
run once, as long as its due time is at most the job's look-back ago.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from conveyor.db import Database

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The real clock."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Every:
    """Every `seconds`, in slots aligned to the Unix epoch (periods are the slots)."""

    seconds: int
    period_format = "%Y-%m-%dT%H:%M:%SZ"

    def last_due(self, now: datetime, tz: ZoneInfo) -> datetime:
        """The start of the slot now is in."""
        epoch = int(now.timestamp())
        return datetime.fromtimestamp(epoch - epoch % self.seconds, UTC)

    def next_due(self, now: datetime, tz: ZoneInfo) -> datetime:
        """The start of the next slot."""
        return self.last_due(now, tz) + timedelta(seconds=self.seconds)

    def period_key(self, due: datetime, tz: ZoneInfo) -> str:
        """The slot's start in UTC."""
        return due.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def describe(self) -> str:
        """For people."""
        return f"every {self.seconds} s"

    @property
    def length(self) -> timedelta:
        """How long one period lasts."""
        return timedelta(seconds=self.seconds)


@dataclass(frozen=True)
class Hourly:
    """Every hour at `minute` past (UTC hours: a local hour repeated by DST is still two hours)."""

    minute: int = 0
    period_format = "%Y-%m-%dT%H"

    def last_due(self, now: datetime, tz: ZoneInfo) -> datetime:
        """This hour's fire time, or the previous hour's if it is still ahead."""
        candidate = now.astimezone(UTC).replace(minute=self.minute, second=0, microsecond=0)
        return candidate if candidate <= now else candidate - timedelta(hours=1)

    def next_due(self, now: datetime, tz: ZoneInfo) -> datetime:
        """The next fire time."""
        return self.last_due(now, tz) + timedelta(hours=1)

    def period_key(self, due: datetime, tz: ZoneInfo) -> str:
        """The UTC hour."""
        return due.astimezone(UTC).strftime("%Y-%m-%dT%H")

    def describe(self) -> str:
        """For people."""
        return f"hourly at :{self.minute:02d} (UTC hours)"

    @property
    def length(self) -> timedelta:
        """How long one period lasts."""
        return timedelta(hours=1)


@dataclass(frozen=True)
class Daily:
    """Every day at hour:minute local time (a time skipped by DST fires at the same offset's
    equivalent, never twice, since the period is the local date)."""

    hour: int
    minute: int = 0
    period_format = "%Y-%m-%d"

    def fire_time(self, day: date, tz: ZoneInfo) -> datetime:
        """The fire time on a local date, in UTC."""
        return datetime.combine(day, time(self.hour, self.minute), tz).astimezone(UTC)

    def last_due(self, now: datetime, tz: ZoneInfo) -> datetime:
        """Today's fire time, or yesterday's if today's is still ahead."""
        today = now.astimezone(tz).date()
        candidate = self.fire_time(today, tz)
        return candidate if candidate <= now else self.fire_time(today - timedelta(days=1), tz)

    def next_due(self, now: datetime, tz: ZoneInfo) -> datetime:
        """The next fire time."""
        last = self.last_due(now, tz).astimezone(tz).date()
        return self.fire_time(last + timedelta(days=1), tz)

    def period_key(self, due: datetime, tz: ZoneInfo) -> str:
        """The local date."""
        return due.astimezone(tz).date().isoformat()

    def describe(self) -> str:
        """For people."""
        return f"daily at {self.hour:02d}:{self.minute:02d}"

    @property
    def length(self) -> timedelta:
        """How long one period lasts."""
        return timedelta(days=1)


@dataclass(frozen=True)
class Monthly:
    """On `day` of every month at hour:minute local time."""

    day: int = 1
    hour: int = 0
    minute: int = 0
    period_format = "%Y-%m"

    def fire_time(self, year: int, month: int, tz: ZoneInfo) -> datetime:
        """The fire time in a local month, in UTC."""
        local = datetime(year, month, self.day, self.hour, self.minute, tzinfo=tz)
        return local.astimezone(UTC)

    def last_due(self, now: datetime, tz: ZoneInfo) -> datetime:
        """This month's fire time, or last month's if this month's is still ahead."""
        local = now.astimezone(tz)
        candidate = self.fire_time(local.year, local.month, tz)
        if candidate <= now:
            return candidate
        year, month = (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)
        return self.fire_time(year, month, tz)

    def next_due(self, now: datetime, tz: ZoneInfo) -> datetime:
        """The next fire time."""
        last = self.last_due(now, tz).astimezone(tz)
        year, month = (last.year, last.month + 1) if last.month < 12 else (last.year + 1, 1)
        return self.fire_time(year, month, tz)

    def period_key(self, due: datetime, tz: ZoneInfo) -> str:
        """The local month."""
        return due.astimezone(tz).strftime("%Y-%m")

    def describe(self) -> str:
        """For people."""
        return f"monthly on day {self.day} at {self.hour:02d}:{self.minute:02d}"

    @property
    def length(self) -> timedelta:
        """How long one period lasts (at least)."""
        return timedelta(days=28)


Cadence = Every | Hourly | Daily | Monthly


@dataclass(frozen=True)
class Job:
    """A periodic job: which task runs it, on which queue, how often."""

    name: str
    task: str
    queue: str
    cadence: Cadence
    # A queued message older than this is dropped by the worker (the next period sends anew).
    expires_seconds: int
    description: str = ""

    def lookback(self, catch_up: timedelta) -> timedelta:
        """How late a period may still be run: a slot of an interval job only while it lasts; a
        calendar period within one period and within `catch_up` (MAINTENANCE_CATCH_UP_DAYS)."""
        if isinstance(self.cadence, Every):
            return self.cadence.length
        return min(self.cadence.length, catch_up)


def valid_period(cadence: Cadence, key: str) -> bool:
    """Whether key names a period of this cadence (`2026-11` for monthly, `2026-11-23` daily)."""
    try:
        datetime.strptime(key, cadence.period_format)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Due:
    """A job due for a period."""

    job: Job
    period_key: str
    due_at: datetime


def due_now(jobs: Iterable[Job], now: datetime, tz: ZoneInfo, catch_up: timedelta) -> list[Due]:
    """Each job's current period, if its due time is within the job's look-back."""
    found = []
    for job in jobs:
        due_at = job.cadence.last_due(now, tz)
        if now - due_at <= job.lookback(catch_up):
            found.append(Due(job, job.cadence.period_key(due_at, tz), due_at))
    return found


@dataclass
class Dispatcher:
    """Sends each due (job, period) once, unless maintenance_runs shows it done or running.
    Only the scheduler holding the lock calls tick(); a message lost on the way is sent again
    after `resend_after`, and the worker's claim makes any duplicate a recorded no-op."""

    db: Database
    jobs: list[Job]
    tz: ZoneInfo
    send: Callable[[Due], None]
    catch_up: timedelta
    clock: Clock = utc_now
    resend_after: timedelta = timedelta(minutes=5)
    max_attempts: int = 3
    _sent: dict[tuple[str, str], datetime] = field(default_factory=dict)

    def tick(self) -> list[Due]:
        """Send what is due now; returns what was sent."""
        now = self.clock()
        due = due_now(self.jobs, now, self.tz, self.catch_up)
        states = run_states(self.db, [(d.job.name, d.period_key) for d in due])
        sent = []
        for item in due:
            key = (item.job.name, item.period_key)
            status, attempts = states.get(key, (None, 0))
            if status in ("succeeded", "running"):
                continue
            if status == "failed" and attempts >= self.max_attempts:
                continue
            last_sent = self._sent.get(key)
            if last_sent is not None and now - last_sent < self.resend_after:
                continue
            self.send(item)
            self._sent[key] = now
            sent.append(item)
        # Keep only what could still be resent: the current periods.
        current = {(d.job.name, d.period_key) for d in due}
        self._sent = {k: v for k, v in self._sent.items() if k in current}
        return sent


def run_states(db: Database, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, int]]:
    """The status and attempts of these (job, period) runs, where a run exists."""
    if not keys:
        return {}
    with db.transaction() as conn:
        rows = conn.execute(
            """
            select m.job, m.period_key, m.status, m.attempts
              from maintenance_runs m
              join unnest(%s::text[], %s::text[]) as k(job, period_key)
                on k.job = m.job and k.period_key = m.period_key
            """,
            ([k[0] for k in keys], [k[1] for k in keys]),
        ).fetchall()
    return {(r["job"], r["period_key"]): (r["status"], int(r["attempts"])) for r in rows}
