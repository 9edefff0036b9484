"""What bench/capacity.py measured, and how it prints: per run and per step from the one-step
and three-step phases, Redis net of the idle phase's background, per delivered event from the
websocket phase, and the connection census."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bench.capacity_probes import StatementTally, WalStats

ROLES = ("web", "worker")
COLUMNS = f"{'per run':>10}{'per step':>10}{'1-step':>10}{'3-step':>10}"
PURPOSES = ("broker", "event pub/sub", "celery events", "conveyor")


@dataclass
class Phase:
    """What one phase counted."""

    name: str
    runs: int
    seconds: float  # from the first sample to the last, the quiet end included
    busy_seconds: float  # from the first submit until every run completed
    statements: StatementTally
    wal: WalStats
    xact_commit: int
    commands: Counter[str]  # INFO commandstats calls, `cmdstat_<name>` -> delta
    by_role: Counter[tuple[str, str, str]]  # MONITOR: (role, command, purpose) -> commands
    cpu: dict[str, float]  # from the phase's start until its runs completed
    stored: tuple[int, int]  # bytes more on disk: run_events, the other tables (indexes in)
    channels: Counter[str]  # PUBLISH by channel prefix
    delivered: int = 0


@dataclass
class Census:
    """Connections per process: (role, pid, Postgres, Redis) rows."""

    rows: list[tuple[str, int, int, int]] = field(default_factory=list)
    unmapped_postgres: int = 0
    unmapped_redis: int = 0
    pattern_subscribers: dict[str, int] = field(default_factory=dict)  # role -> connections


Figure = Callable[[Phase], float]


def report(phases: list[Phase], census: Census, setup: str) -> None:
    """Print every figure the capacity model uses."""
    idle, one, three, followed = phases
    print(f"capacity inputs, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, on this machine")
    print(setup)
    for phase in phases[1:]:
        print(
            f"  {phase.name}: {phase.runs} runs completed in {phase.busy_seconds:.1f} s "
            f"({phase.runs / phase.busy_seconds:.0f} runs/s with every statement logged)"
        )
    print()
    print(f"{'Postgres':44}{COLUMNS}")
    postgres_rows: list[tuple[str, Figure]] = [
        ("statements, web", lambda p: p.statements.statements["web"]),
        ("statements, worker", lambda p: p.statements.statements["worker"]),
        ("statements, all (BEGIN/COMMIT apart)", all_statements),
        ("BEGIN/COMMIT/SAVEPOINT", lambda p: sum_roles(p.statements.control)),
        ("transactions (from the log)", lambda p: sum_roles(p.statements.transactions)),
        ("xact_commit (pg_stat_database) - bench's", xact_commit),
        ("write commits (WAL COMMIT records)", lambda p: p.wal.commits),
        ("WAL bytes", lambda p: p.wal.bytes),
        ("  of which full-page images", lambda p: p.wal.fpi_bytes),
        ("WAL records", lambda p: p.wal.records),
        ("table+index bytes, run_events", lambda p: p.stored[0]),
        ("table+index bytes, other tables", lambda p: p.stored[1]),
    ]
    for label, figure in postgres_rows:
        print_split(label, figure, one, three)
    print("  (bytes on disk grow by 8 KiB pages and keep dead row versions: autovacuum is off)")
    print()
    print(f"{'Redis (net of the idle rate)':44}{COLUMNS}")
    redis_rows: list[tuple[str, Figure]] = [
        ("commands (INFO commandstats)", netted(idle, lambda q: float(sum(q.commands.values()))))
    ]
    redis_rows += [(f"  {s} (MONITOR)", netted(idle, purpose_count(s))) for s in PURPOSES]
    redis_rows += [
        (f"  {role}: {s}", netted(idle, role_purpose(role, s))) for role in ROLES for s in PURPOSES
    ]
    redis_rows.append(("messages published (broker LPUSH)", broker_pushes))
    redis_rows += [(f"  {c}", netted(idle, command_count(c))) for c in top_commands(one, three)]
    for label, figure in redis_rows:
        print_split(label, figure, one, three)
    print()
    print_cpu(one, three)
    print_sockets(followed, one, idle)
    print_idle(idle)
    print_census(census)


def print_split(label: str, figure: Figure, one: Phase, three: Phase) -> None:
    """Per run and per step from the two phases: per step = (3-step - 1-step) / 2, per run =
    1-step - per step; then each phase's own average per run."""
    a1, a3 = figure(one) / one.runs, figure(three) / three.runs
    step = (a3 - a1) / 2
    print(f"{label:44}{a1 - step:>10,.1f}{step:>10,.1f}{a1:>10,.1f}{a3:>10,.1f}")


def sum_roles(counter: Counter[str]) -> float:
    """Web's and the worker's together (not the bench's own)."""
    return float(sum(counter[role] for role in ROLES))


def all_statements(phase: Phase) -> float:
    """Every statement web and worker sent, transaction control apart."""
    return sum_roles(phase.statements.statements)


def xact_commit(phase: Phase) -> float:
    """pg_stat_database's commits less the bench's own autocommit polls."""
    bench = phase.statements.statements["capacity-bench"]
    return float(phase.xact_commit - bench)


def net(phase: Phase, idle: Phase, figure: Figure) -> float:
    """A count less what the idle phase's rate gives over this phase's duration."""
    return figure(phase) - figure(idle) * phase.seconds / idle.seconds


def netted(idle: Phase, figure: Figure) -> Figure:
    """figure, less the idle phase's rate over each phase's duration."""
    return lambda p: net(p, idle, figure)


def command_count(command: str) -> Figure:
    """Calls of one Redis command (INFO commandstats)."""
    return lambda p: float(p.commands[f"cmdstat_{command}"])


def purpose_count(purpose: str) -> Figure:
    """Commands MONITOR saw for one purpose, from web and worker."""
    return lambda p: float(
        sum(n for (role, _c, s), n in p.by_role.items() if s == purpose and role in ROLES)
    )


def role_purpose(role: str, purpose: str) -> Figure:
    """Commands MONITOR saw from one role for one purpose."""
    return lambda p: float(
        sum(n for (r, _c, s), n in p.by_role.items() if (r, s) == (role, purpose))
    )


def broker_pushes(phase: Phase) -> float:
    """Task messages published: kombu's LPUSH onto a queue (no idle background)."""
    return float(sum(n for (_r, c, s), n in phase.by_role.items() if (c, s) == ("lpush", "broker")))


def top_commands(one: Phase, three: Phase) -> list[str]:
    """Every command either run phase used, most used first."""
    total = one.commands + three.commands
    return [name.removeprefix("cmdstat_") for name, _ in total.most_common() if total[name] > 0]


def print_cpu(one: Phase, three: Phase) -> None:
    """CPU per run by part (Postgres's includes writing the statement log)."""
    print(f"{'CPU ms per run (submits until all completed)':44}{'1-step':>10}{'3-step':>10}")
    for part in sorted(one.cpu):
        single, triple = one.cpu[part] * 1000 / one.runs, three.cpu[part] * 1000 / three.runs
        print(f"  {part:42}{single:>10.1f}{triple:>10.1f}")
    print()


def print_sockets(followed: Phase, one: Phase, idle: Phase) -> None:
    """Per delivered event: Redis's PUBLISHes (a run's events are published whether or not a
    socket follows; each web process's one subscriber fans them out), and what following cost
    beyond the same number of runs unfollowed (the one-step phase, scaled)."""
    delivered = max(1, followed.delivered)
    publishes = followed.commands["cmdstat_publish"]
    scale = followed.runs / one.runs

    def extra(figure: Figure) -> float:
        return (net(followed, idle, figure) - net(one, idle, figure) * scale) / delivered

    def all_commands(p: Phase) -> float:
        return float(sum(p.commands.values()))

    def web_statements(p: Phase) -> float:
        return float(p.statements.statements["web"])

    runs = followed.runs
    print(f"websockets: {followed.name}")
    rows = [
        ("events delivered to sockets", f"{delivered:,} ({delivered / runs:.1f}/run)"),
        ("Redis PUBLISH", f"{publishes:,} ({publishes / runs:.1f}/run)"),
        ("Redis PUBLISH per delivered event", f"{publishes / delivered:.3f}"),
        ("Redis commands per delivered event, beyond", f"{extra(all_commands):.3f}"),
        ("web Postgres statements per delivered event, beyond", f"{extra(web_statements):.3f}"),
    ]  # fmt: skip
    for label, value in rows:
        print(f"  {label:54}{value:>20}")
    print("  (beyond: less the one-step phase's figures for as many runs)")
    print()


def print_idle(idle: Phase) -> None:
    """The background: what web and worker do per second with nothing submitted."""
    seconds = idle.seconds
    print(f"idle background over {seconds:.0f} s, per second")
    for role in ROLES:
        redis_ops = sum(n for (r, _c, _s), n in idle.by_role.items() if r == role)
        commands = Counter({c: n for (r, c, _s), n in idle.by_role.items() if r == role})
        detail = ", ".join(f"{c} {n / seconds:.2f}" for c, n in commands.most_common(4))
        print(
            f"  {role:8} Postgres statements {idle.statements.statements[role] / seconds:6.2f}, "
            f"Redis commands {redis_ops / seconds:6.2f} ({detail})"
        )
    channels = ", ".join(f"{c} {n / seconds:.2f}" for c, n in idle.channels.most_common(3))
    kinds = ", ".join(f"{k} {n}" for k, n in idle.wal.kinds.most_common(3))
    print(f"  PUBLISH by channel: {channels or 'none'}")
    print(f"  WAL {idle.wal.bytes / seconds:,.0f} bytes/s ({kinds or 'no records'})")
    print()


def print_census(census: Census) -> None:
    """Connections per process, and per role."""
    print("connections per process (web, worker and beat after the phases; ss maps sockets)")
    print(f"  {'role':8}{'pid':>8}{'Postgres':>10}{'Redis':>8}")
    for role, pid, postgres, redis_count in census.rows:
        print(f"  {role:8}{pid:>8}{postgres:>10}{redis_count:>8}")
    totals: dict[str, list[int]] = {}
    for role, _pid, postgres, redis_count in census.rows:
        entry = totals.setdefault(role, [0, 0, 0])
        entry[0] += 1
        entry[1] += postgres
        entry[2] += redis_count
    for role, (processes, postgres, redis_count) in totals.items():
        print(
            f"  {role}: {processes} processes, {postgres} Postgres, {redis_count} Redis connections"
        )
    print(
        f"  not mapped to a process of these: Postgres {census.unmapped_postgres}, "
        f"Redis {census.unmapped_redis}"
    )
    subscribers = ", ".join(f"{r} {n}" for r, n in sorted(census.pattern_subscribers.items()))
    print(f"  Redis pattern subscribers (PSUBSCRIBE) by role: {subscribers or 'none'}")
