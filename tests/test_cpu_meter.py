"""The benchmarks' CPU accounting (`benchmarks.cpu_meter`): roles read from Ray's process
titles, and CPU seconds counted for this process's descendants only, against a real child
process that burns a known amount of CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.cpu_meter import CpuMeter, role_of

BURN = """
import time
t = time.process_time()
while time.process_time() - t < 0.4:
    pass
print("burnt", flush=True)
time.sleep(30)
"""


@pytest.mark.parametrize(
    ("title", "role"),
    [
        ("ray::ServeReplica:cascade:Tier-cheap", "tier-cheap"),
        ("ray::ServeReplica:cascade:Tier-strong", "tier-strong"),
        ("ray::ServeReplica:cascade:Tier-cheap.initialize_and_get_metadata", "tier-cheap"),
        ("ray::ServeReplica:cascade:Ingress", "ingress"),
        ("ray::ServeReplica:cascade:Router", "router"),
        ("ray::ServeReplica:bare:BareLLM", "bare"),
        ("ray::ServeReplica:hop1:Callee", "hop"),
        ("ray::ProxyActor", "proxy"),
        ("VLLM::EngineCore", None),  # a replica's child: its parent's engine
        ("/usr/bin/raylet --node", None),  # Ray's own: `ray` in the meter
    ],
)
def test_roles_come_from_ray_process_titles(title, role):
    assert role_of(title) == role


def test_meter_counts_a_child_and_not_the_rest_of_the_machine():
    meter = CpuMeter()
    before = meter.snapshot()
    child = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "burnt"
        spent = meter.since(before)
        assert child.pid in meter.snapshot()
        # the child is nobody's replica: Ray's own share; it burnt >= 0.4 s in CPU time
        assert 0.4 <= spent["ray"] < 5.0
        assert "client" in spent
        # a process outside this one's tree (pid 1) is never measured
        assert 1 not in meter.snapshot()
    finally:
        child.kill()
        child.wait()
