"""Where the router runs and in which dtype: the config's `device`/`dtype` resolved against
the machine the replica landed on.

`calibration.config.RouterArgs` cannot import torch, so its "auto" is resolved here, once, by
everything that builds a `RouterWithHead` (the Router deployment and the offline evaluation),
so both run the same router:

    resolve_device_dtype("auto", "auto")    # (device("cuda"), torch.bfloat16) with a GPU,
                                            # (device("cpu"), torch.float32) without
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["DTYPES", "DeviceName", "DtypeName", "resolve_device_dtype"]

DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device_dtype(
    device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
) -> tuple[torch.device, torch.dtype]:
    """The concrete (device, dtype) for a router; ValueError saying what to change when the
    machine cannot run what the config asks (cuda without a GPU, float16 on cpu)."""
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"router device must be auto, cpu or cuda, got {device!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"router device {name!r} asked for, but torch sees no CUDA GPU here "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); set router.device "
            "to auto or cpu, or give the Router deployment a GPU (ray_actor_options.num_gpus)"
        )
    resolved = torch.device(name)
    if isinstance(dtype, torch.dtype):
        out = dtype
    elif dtype == "auto":
        out = torch.bfloat16 if resolved.type == "cuda" else torch.float32
    elif dtype in DTYPES:
        out = DTYPES[dtype]
    else:
        raise ValueError(f"router dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    if resolved.type == "cpu" and out == torch.float16:
        raise ValueError(
            "router dtype float16 is not supported on cpu (slow, inaccurate kernels); set "
            "router.dtype to float32 or bfloat16, or run the router on cuda"
        )
    return resolved, out
