"""CPU seconds per request, by who spent them: where a saturated machine's cores go.

At 16 clients on 2 cores every arm is CPU-bound, so its requests/s is the cores divided by the
CPU one request costs across every process it touches. Measuring that cost per process role
says which part of the ratio to the bare app is Serve's machinery (proxy, ingress, a replica's
request handling) and which is model work that the cascade's policy itself asks for (the
router's forward pass, the strong tier's share of the answers), which no serving design
removes on shared cores.

Only this process and its descendants count: `ray.init(address="local")` (how the benchmarks
start Ray, `deployments.local.running_app`) starts the GCS and the raylet as children of the
driver and every worker under the raylet, so another cluster on the same machine (a test run,
a second benchmark) is not measured. Roles come from Ray's process titles
(`ray::ServeReplica:<app>:<deployment>`, `ray::ProxyActor`, ...); a process started by a
replica (vLLM's EngineCore and its worker) counts as that replica's `engine`, so on vLLM the
engine's work is told apart from the replica's. Everything else Ray runs (raylet, GCS, the
controller, idle workers) is `ray`; this process (the clients and the driver) is `client`.
psutil reads the counters; nothing here is Ray-internal API.
"""

from __future__ import annotations

import os
from collections import defaultdict

import psutil

__all__ = ["CpuMeter", "role_of"]

# (substring of the process title, role); the first match wins, most specific first
_TITLES = (
    ("ServeReplica:cascade:Ingress", "ingress"),
    ("ServeReplica:cascade:Router", "router"),
    ("ServeReplica:cascade:Tier-", "tier"),  # + the tier's name, below
    ("ServeReplica:bare:", "bare"),
    ("ServeReplica:hop", "hop"),
    ("ProxyActor", "proxy"),
)


def _title(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
        return " ".join(cmd) if cmd else proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def role_of(title: str) -> str | None:
    """The serving role of a process with this title, or None (Ray's own, or a child)."""
    for needle, role in _TITLES:
        if needle in title:
            if role == "tier":
                # the title ends in the method running, when one is: Tier-cheap.handle_request
                name = title.split("ServeReplica:cascade:Tier-", 1)[1].split()[0].split(".")[0]
                return f"tier-{name}"
            return role
    return None


class CpuMeter:
    """Snapshot every Ray process's CPU seconds by role; `since(snapshot)` gives the delta.

    A process that started or ended between two snapshots counts from zero or is lost: take
    snapshots around windows in which the replicas are steady (no autoscaling mid-window)."""

    def __init__(self) -> None:
        self._me = os.getpid()

    def _role(self, proc: psutil.Process) -> str:
        """Read afresh each time: a worker Ray started idle (`ray::IDLE`) takes a replica's
        title when the controller gives it one."""
        if proc.pid == self._me:
            return "client"
        role = role_of(_title(proc))
        if role is None:  # a replica's child (EngineCore) is the replica's engine
            try:
                ups = (role_of(_title(parent)) for parent in proc.parents())
                up = next((r for r in ups if r is not None), None)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                up = None
            role = f"{up}:engine" if up else "ray"
        return role

    def snapshot(self) -> dict[int, tuple[str, float]]:
        """pid -> (role, user + system CPU seconds so far) for this process and its
        descendants."""
        out = {}
        me = psutil.Process(self._me)
        for proc in [me, *me.children(recursive=True)]:
            try:
                role = self._role(proc)
                t = proc.cpu_times()
                out[proc.pid] = (role, t.user + t.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return out

    def replicas(self, snapshot: dict[int, tuple[str, float]] | None = None) -> dict[str, int]:
        """Live processes per serving role in `snapshot` (default: now) (replicas; not
        engines, Ray's own or the clients): an autoscaling tier's count, and a replica that is
        still starting counts too."""
        counts: dict[str, int] = defaultdict(int)
        for role, _ in (snapshot or self.snapshot()).values():
            if ":" not in role and role not in ("ray", "client"):
                counts[role] += 1
        return dict(sorted(counts.items()))

    def since(
        self,
        before: dict[int, tuple[str, float]],
        after: dict[int, tuple[str, float]] | None = None,
    ) -> dict[str, float]:
        """CPU seconds spent per role from `before` to `after` (default: now)."""
        spent: dict[str, float] = defaultdict(float)
        for pid, (role, now) in (after or self.snapshot()).items():
            spent[role] += now - before.get(pid, (role, 0.0))[1]
        return dict(spent)
