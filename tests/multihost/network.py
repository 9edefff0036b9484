"""Hosts made of Linux network namespaces: a bridge in the root namespace (its .1 address), and
per host a namespace joined to it by a veth pair, with its own hostname and (optionally) its own
empty /tmp. Nothing is routed beyond the bridge's /24, so a host can reach only the others.

Every name starts with PREFIX and a random suffix, and a state file records the pytest process
that owns the suffix: sweep_leftovers() tears down what a killed run left behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "cvmh"
STATE_DIR = Path("/run/conveyor-multihost")
SUBNET_FIRST_OCTETS = "10.231"
SUBNET_ATTEMPTS = 5
COMMAND_TIMEOUT = 10
STOP_SECONDS = 15.0
# Host.cut_off_from's policy-routing preferences: its two blackhole rules, then the local table.
CUT_RULES = (10, 11)
LOCAL_RULE = 100
# A host's own temporary folder: a fresh tmpfs mounted here in its mount namespace, so no path
# there is shared. Not /tmp itself: a checkout under /tmp (a CI clone) would vanish beneath it.
HOST_TMP = STATE_DIR / "host-tmp"
# Inside a host: its own hostname, and HOST_TMP a fresh tmpfs.
HOST_SETUP = (
    'hostname "$CVMH_HOSTNAME" && '
    'if [ "$CVMH_PRIVATE_TMP" = 1 ]; then '
    f"mount -t tmpfs -o size=256m,mode=1777 tmpfs {HOST_TMP}; fi && "
    'exec "$@"'
)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one command (ip, mostly), bounded in time."""
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=check
    )


def why_namespaces_are_unavailable() -> str | None:
    """None when this process may build namespaces and bridges, else the reason (a skip)."""
    if os.geteuid() != 0:
        return "needs root: it creates network namespaces, veth pairs and a bridge"
    for tool in ("ip", "unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs the `{tool}` command"
    probe = f"{PREFIX}probe{secrets.token_hex(3)}"
    added = run("ip", "netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"`ip netns add` is not permitted here: {added.stderr.strip()}"
    run("ip", "netns", "del", probe, check=False)
    return None


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of pid (field 22 of /proc/<pid>/stat), None if it is gone: with
    the pid it names a process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_alive(suffix: str) -> bool:
    """Whether the pytest process that created suffix's names is still running."""
    try:
        owner = json.loads((STATE_DIR / suffix).read_text())
    except (OSError, ValueError):
        return False
    return process_start_time(int(owner["pid"])) == str(owner["start"])


def kill_namespace_processes(namespace: str) -> None:
    """SIGKILL whatever still runs in a namespace (it may hold a port or a tmpfs)."""
    listed = run("ip", "netns", "pids", namespace, check=False).stdout.split()
    for pid in listed:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def tear_down(suffix: str) -> None:
    """Remove every namespace and link named for suffix, killing what runs in them."""
    namespaces = [
        line.split()[0]
        for line in run("ip", "netns", "list", check=False).stdout.splitlines()
        if line.startswith(PREFIX + suffix)
    ]
    for namespace in namespaces:
        kill_namespace_processes(namespace)
    for namespace in namespaces:
        run("ip", "netns", "del", namespace, check=False)
    links = re.findall(rf"^\d+: ({PREFIX}{suffix}\w*)[@:]", run("ip", "-o", "link").stdout, re.M)
    for link in links:
        run("ip", "link", "del", link, check=False)
    (STATE_DIR / suffix).unlink(missing_ok=True)


def sweep_leftovers() -> list[str]:
    """Tear down the names of runs whose pytest process is gone; returns their suffixes."""
    names = run("ip", "netns", "list", check=False).stdout + run("ip", "-o", "link").stdout
    suffixes = set(re.findall(rf"\b{PREFIX}([0-9a-f]{{6}})", names))
    if STATE_DIR.exists():
        suffixes |= {p.name for p in STATE_DIR.iterdir() if re.fullmatch("[0-9a-f]{6}", p.name)}
    stale = sorted(s for s in suffixes if not owner_alive(s))
    for suffix in stale:
        tear_down(suffix)
    return stale


def unused_subnet() -> ipaddress.IPv4Network:
    """A 10.231.N.0/24 that no interface on this machine has an address in and no route names."""
    addresses = re.findall(r"inet (\S+)", run("ip", "-4", "-o", "addr").stdout)
    routes = re.findall(r"^(\d[\d.]*(?:/\d+)?)", run("ip", "-4", "route").stdout, re.M)
    taken = {ipaddress.ip_interface(network).network for network in [*addresses, *routes]}
    candidates = [ipaddress.IPv4Network(f"{SUBNET_FIRST_OCTETS}.{n}.0/24") for n in range(1, 255)]
    free = [net for net in candidates if not any(net.overlaps(other) for other in taken)]
    if not free:
        raise RuntimeError(f"every {SUBNET_FIRST_OCTETS}.N.0/24 is in use")
    return free[secrets.randbelow(len(free))]


@dataclass
class Host:
    """One namespace: its name, its address on the bridge, its hostname, and `link`, its veth's
    end on the bridge."""

    namespace: str
    address: str
    hostname: str
    private_tmp: bool
    link: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def wrap(self, argv: list[str], user: str | None = None) -> list[str]:
        """argv as run on this host: in its namespace, with its hostname and /tmp, as user."""
        as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"]
        return [
            "ip", "netns", "exec", self.namespace,
            "unshare", "--uts", "--mount", "--propagation", "private",
            "sh", "-c", HOST_SETUP, "sh",
            *(as_user if user else []), *argv,
        ]  # fmt: skip

    def setup_env(self) -> dict[str, str]:
        """What HOST_SETUP reads."""
        return {"CVMH_HOSTNAME": self.hostname, "CVMH_PRIVATE_TMP": str(int(self.private_tmp))}

    def start(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        log: Path,
        cwd: Path,
        user: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start argv on this host (as user, if given), output to log, in its own process
        group so stop() ends its children too."""
        with log.open("ab") as output:
            process = subprocess.Popen(
                self.wrap(argv, user),
                cwd=cwd,
                env={**env, **self.setup_env()},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def run(
        self, argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run argv on this host to its end (bounded by timeout); its output captured."""
        return subprocess.run(
            self.wrap(argv),
            cwd=cwd,
            env={**env, **self.setup_env()},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def disconnect(self) -> None:
        """Unplug the host: its link to the bridge goes down, and what others send it is dropped
        without a reset, as when a host loses power or its network."""
        run("ip", "link", "set", self.link, "down")

    def reconnect(self) -> None:
        """Plug the host back in."""
        run("ip", "link", "set", self.link, "up")

    def cut_off_from(self, address: str, port: int) -> None:
        """Drop this host's TCP traffic with one service (address:port), both ways and silently
        (no reset), while it still reaches everything else, as when a firewall rule or a route
        to one service fails. One cut at a time; end_cut_off() ends it."""
        rule = ["ip", "-n", self.namespace, "rule"]
        # The local table's rule (preference 0) would deliver the service's packets to this host
        # before a later rule is read: it moves behind the cut's rules (the same lookup, once).
        if run(*rule, "show", "pref", "0").stdout.strip():
            run(*rule, "add", "pref", str(LOCAL_RULE), "lookup", "local")
            run(*rule, "del", "pref", "0")
        out, back = CUT_RULES
        run(*rule, "add", "pref", str(out), "to", address,
            "ipproto", "tcp", "dport", str(port), "blackhole")  # fmt: skip
        run(*rule, "add", "pref", str(back), "from", address,
            "ipproto", "tcp", "sport", str(port), "blackhole")  # fmt: skip

    def end_cut_off(self) -> None:
        """End cut_off_from(): the connections it stalled go on at their next retransmission."""
        for preference in CUT_RULES:
            run("ip", "-n", self.namespace, "rule", "del", "pref", str(preference), check=False)

    def terminate(self) -> None:
        """SIGTERM every process group started here (a graceful stop)."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)

    def wait_stopped(self, deadline: float) -> None:
        """Wait for the processes until deadline (monotonic), then SIGKILL what is left, and
        anything else still in the namespace."""
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=COMMAND_TIMEOUT)
        kill_namespace_processes(self.namespace)


class Network:
    """A bridge with the root namespace at .1, and hosts added at .2, .3, …"""

    def __init__(self) -> None:
        self.suffix = secrets.token_hex(3)
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        HOST_TMP.mkdir(exist_ok=True)
        owner = {"pid": os.getpid(), "start": process_start_time(os.getpid())}
        (STATE_DIR / self.suffix).write_text(json.dumps(owner))
        self.bridge = f"{PREFIX}{self.suffix}br"
        self.hosts: dict[str, Host] = {}
        run("ip", "link", "add", self.bridge, "type", "bridge")
        self.subnet = self._claim_subnet()
        self.gateway = str(self.subnet.network_address + 1)
        run("ip", "link", "set", self.bridge, "up")

    def _claim_subnet(self) -> ipaddress.IPv4Network:
        """Give the bridge the .1 of an unused subnet; another run choosing the same one at
        the same moment (pytest-xdist) shows as a second address in it, and one tries again."""
        for _ in range(SUBNET_ATTEMPTS):
            subnet = unused_subnet()
            address = f"{subnet.network_address + 1}/24"
            run("ip", "addr", "add", address, "dev", self.bridge)
            holders = re.findall(
                rf"^\d+: (\S+)\s+inet {re.escape(address)}", run("ip", "-4", "-o", "addr").stdout,
                re.M,
            )  # fmt: skip
            if holders == [self.bridge]:
                return subnet
            run("ip", "addr", "del", address, "dev", self.bridge, check=False)
            time.sleep(secrets.randbelow(100) / 100)
        raise RuntimeError(f"no free {SUBNET_FIRST_OCTETS}.N.0/24 after {SUBNET_ATTEMPTS} tries")

    def add_gateway_address(self) -> str:
        """Another address of the root namespace on the bridge (the subnet's last)."""
        address = str(self.subnet.broadcast_address - 1)
        run("ip", "addr", "add", f"{address}/24", "dev", self.bridge)
        return address

    def add_host(self, role: str, *, private_tmp: bool = True) -> Host:
        """A namespace named for role, its veth on the bridge, the next address of the subnet."""
        index = len(self.hosts)
        namespace = f"{PREFIX}{self.suffix}-{role}"
        outside = f"{PREFIX}{self.suffix}v{index}"
        address = str(self.subnet.network_address + 2 + index)
        run("ip", "netns", "add", namespace)
        run(
            "ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", namespace
        )
        run("ip", "link", "set", outside, "master", self.bridge, "up")
        inside = ["ip", "netns", "exec", namespace, "ip"]
        run(*inside, "addr", "add", f"{address}/24", "dev", "eth0")
        run(*inside, "link", "set", "eth0", "up")
        run(*inside, "link", "set", "lo", "up")
        host = Host(namespace, address, f"{role}-{self.suffix}", private_tmp, outside)
        self.hosts[role] = host
        return host

    def close(self) -> None:
        """Stop every host's processes, the first host added last (the db host: the others need
        it while they drain), then remove the namespaces, veths and bridge."""
        hosts = list(self.hosts.values())
        for group in (hosts[1:], hosts[:1]):
            for host in group:
                host.terminate()
            deadline = time.monotonic() + STOP_SECONDS
            for host in group:
                with contextlib.suppress(Exception):  # one host's failure must not leak the rest
                    host.wait_stopped(deadline)
        tear_down(self.suffix)
