"""The running graph's Serve actors as processes: which replica, which pid, how much memory;
and killing one (the soak's chaos step).

Actors and their pids come from the GCS actor table (`ray._private.state.actors()`), each
replica's state (STARTING, RUNNING) from the Serve controller: Ray's state API
(`ray.util.state`) needs the dashboard, which `deployments.local.running_app` leaves off, and
on a shared machine its default address may be another instance's dashboard. Only this
process's Ray instance is asked, so other Ray instances on the machine are never touched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = [
    "ProcMemory",
    "ServeActor",
    "kill",
    "memory",
    "replica_states",
    "serve_actors",
    "still_running",
]

SERVE_NAMESPACE = "serve"
MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeActor:
    """One live Serve actor: a replica of a deployment, or the proxy / the controller."""

    name: str  # e.g. SERVE_REPLICA::cascade#Tier-cheap#k3j2x1
    deployment: str  # Tier-cheap, Router, Ingress; "(proxy)" or "(controller)" for the others
    pid: int
    state: str  # a replica's Serve state (STARTING, RUNNING, ...); ALIVE for the others

    @property
    def replica(self) -> bool:
        return not self.deployment.startswith("(")

    @property
    def running(self) -> bool:
        """Serving (a replica whose constructor, e.g. the engine's start, has finished)."""
        return self.state in ("RUNNING", "ALIVE")

    @property
    def short(self) -> str:
        """The replica's id (the last part of its name), or the system actor's label."""
        return self.name.rsplit("#", 1)[-1] if self.replica else self.deployment


def replica_states(app: str = "cascade") -> dict[str, str]:
    """Serve's state of each replica of `app` by actor name, from the controller (the data
    the dashboard's Serve API shows): STARTING until its constructor returns, then RUNNING."""
    import ray
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    details = ray.get(controller.get_serve_instance_details.remote(), timeout=60)
    deps = details["applications"].get(app, {}).get("deployments", {})
    return {
        r["actor_name"]: str(getattr(r["state"], "value", r["state"]))
        for d in deps.values()
        for r in d["replicas"]
    }


def serve_actors(app: str = "cascade") -> list[ServeActor]:
    """Every ALIVE replica of `app` (with its Serve state), the proxy and the controller."""
    from ray._private import state

    states = replica_states(app)
    out = []
    for info in state.actors().values():
        name, pid = info.get("Name") or "", int(info.get("Pid") or 0)
        if info.get("State") != "ALIVE" or not pid:
            continue
        if name.startswith(f"SERVE_REPLICA::{app}#"):
            out.append(ServeActor(name, name.split("#")[1], pid, states.get(name, "UNKNOWN")))
        elif name.startswith("SERVE_PROXY_ACTOR"):
            out.append(ServeActor(name, "(proxy)", pid, "ALIVE"))
        elif name == "SERVE_CONTROLLER_ACTOR":
            out.append(ServeActor(name, "(controller)", pid, "ALIVE"))
    return sorted(out, key=lambda a: a.name)


def kill(actor: ServeActor) -> None:
    """Kill the actor's process for good (`no_restart`): Serve's controller must notice and
    start a replacement replica, as it would after a crash."""
    import ray

    ray.kill(ray.get_actor(actor.name, namespace=SERVE_NAMESPACE), no_restart=True)


@dataclass(frozen=True)
class ProcMemory:
    """RSS of an actor's process and of its children (vLLM's EngineCore runs in a child)."""

    t: float
    self_mib: float
    children_mib: float
    children: tuple[tuple[int, float], ...]  # (pid, create_time): to find orphans later

    @property
    def total_mib(self) -> float:
        return self.self_mib + self.children_mib


def memory(pid: int, t: float | None = None) -> ProcMemory | None:
    """The process's memory now, or None when it is gone."""
    import psutil

    try:
        proc = psutil.Process(pid)
        own = proc.memory_info().rss / MIB
        kids, kid_rss = [], 0.0
        for child in proc.children(recursive=True):
            try:
                kid_rss += child.memory_info().rss / MIB
                kids.append((child.pid, child.create_time()))
            except psutil.Error:
                continue
    except psutil.Error:
        return None
    return ProcMemory(time.perf_counter() if t is None else t, own, kid_rss, tuple(kids))


def still_running(children: tuple[tuple[int, float], ...]) -> list[tuple[int, float]]:
    """Those of `children` (pid, create_time) still alive, with their RSS in MiB: the
    processes a killed replica left behind (the same pid with another start time is not)."""
    import psutil

    alive = []
    for pid, created in children:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 1e-3:
                alive.append((pid, proc.memory_info().rss / MIB))
        except psutil.Error:
            continue
    return alive
