"""The price of one Ray Serve hop on this machine: the floor under what the graph adds.

The mission puts every tier in its own deployment (each autoscales on its own), so a request
for `model=cheap` crosses one more Serve hop than the bare app's (proxy -> ingress -> tier
replica against proxy -> bare replica). What that hop costs is Ray's, not the cascade's, and
on a shared 2-core machine it is not the few milliseconds a fast server pays. So the
benchmarks measure it in the same run, beside the arms: two model-free apps that answer the
same OpenAI chat shape,

- `hop0`: one deployment that reads the JSON body and answers (the bare app without a model);
- `hop1`: the same, but the answer comes from a second deployment through a handle call (the
  graph's forced path without a model, router, decision or routing record).

`hop1 - hop0` is one hop's latency (1 client) and CPU (16 clients). `forced - bare` can come
down to it and no further without merging deployments; what `forced` adds beyond it is the
cascade's own work, the part issue 13's "overhead down to the floor" is about.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from ray import serve
from ray.serve.handle import DeploymentHandle

from benchmarks.bare_app import chat_completion

__all__ = ["HOP_APPS", "hop_apps"]

# route prefix of each model-free app, beside the graph behind the same proxy
HOP_APPS = {"hop0": "/hop0", "hop1": "/hop1"}

_direct = FastAPI(title="hop0: no model, no hop")
_via = FastAPI(title="hop1: no model, one handle call")


def _answer(body: dict[str, Any]) -> dict[str, Any]:
    """The bare app's answer shape (`benchmarks.bare_app.chat_completion`) without a model:
    the body's last message echoed (so the request is read, as every arm reads it)."""
    text = str(body["messages"][-1]["content"])
    return chat_completion(str(body.get("model", "")), text, "stop", 0, 0)


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.05})
@serve.ingress(_direct)
class NoHop:
    @_direct.post("/v1/chat/completions")
    async def chat(self, request: Request) -> dict:
        return _answer(await request.json())


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.05})
class Callee:
    async def __call__(self, body: dict) -> dict:
        return _answer(body)


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.05})
@serve.ingress(_via)
class OneHop:
    def __init__(self, callee: DeploymentHandle) -> None:
        self.callee = callee

    @_via.post("/v1/chat/completions")
    async def chat(self, request: Request) -> dict:
        return await self.callee.remote(await request.json())


def hop_apps() -> dict[str, tuple[Any, str]]:
    """{name: (application, route prefix)} for `deployments.local.running_app`'s extra apps."""
    return {
        "hop0": (NoHop.bind(), HOP_APPS["hop0"]),
        "hop1": (OneHop.bind(Callee.bind()), HOP_APPS["hop1"]),
    }
