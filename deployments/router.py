"""RouterDeployment: the Gemma router and its confidence head, batched across requests.

The router reads the raw user query (not a tier's chat format). Without a trained head the
router's max class probability stands in, and the response says so (`confidence_source`).
It runs where the config's `router.device`/`router.dtype` say ("auto": cuda + bfloat16 when the
replica has a GPU, else cpu + float32); `info()` reports what they resolved to.

A head trained for another router is refused at start-up (`calibration.identity.IdentityMismatch`)
unless `calibration.allow_mismatch`; then it is served, loudly: a WARNING, `head_mismatch` in
`info()` and in every answer (the ingress marks `routing.calibration_mismatch`), and the
`cascade_calibration_mismatch{tier="router"}` gauge at 1.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from deployments.metrics import router_mismatch_gauge
from models.router_model import RouterWithHead
from models.zoo import resolve

__all__ = ["RouterDeployment"]

logger = logging.getLogger("ray.serve")


@serve.deployment
class RouterDeployment:
    def __init__(
        self,
        model: str = "zoo:router",
        trust_remote_code: bool = False,
        device: str = "auto",
        dtype: str = "auto",
        allow_mismatch: bool = False,
    ) -> None:
        self.router = RouterWithHead(
            resolve(model),
            trust_remote_code=trust_remote_code,
            device=device,
            dtype=dtype,
            allow_mismatch=allow_mismatch,
        )
        router_mismatch_gauge(self.router.head_mismatch)
        placed = self.router.placement
        logger.info(
            "router %s on %s in %s (config: device=%s, dtype=%s), confidence from %s",
            model,
            placed["device"],
            placed["dtype"],
            device,
            dtype,
            self.router.confidence_source,
        )

    async def predict(self, query: str) -> dict:
        return await self._predict_batch(query)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def _predict_batch(self, queries: list[str]) -> list[dict]:
        """No wait to fill (it cost every cascade request 5 ms at low load): the queries that
        queued while the last forward pass ran form the next batch, so load still batches."""
        out = await asyncio.to_thread(self.router, list(queries))
        mismatch = self.router.head_mismatch is not None
        return [{**row, "head_mismatch": mismatch} for row in out.to_dicts()]

    def info(self) -> dict:
        return {
            "confidence_source": self.router.confidence_source,
            "labels": self.router.labels,
            "head_mismatch": self.router.head_mismatch,
            **self.router.placement,
        }
