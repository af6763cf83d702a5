"""The attention implementation a generation runs (the backbone config's `attention`), as a context around each
transformer forward.

- `sdpa`: torch's `scaled_dot_product_attention`, which picks its kernel itself (nothing changes).
- `sdpa_flash`, `sdpa_efficient`, `sdpa_cudnn`, `sdpa_math`: torch SDPA held to one kernel
  (`torch.nn.attention.sdpa_kernel`). They reach both families: CogVideoX's attention processor calls torch SDPA,
  and Wan's goes through diffusers' attention dispatcher, whose default backend ("native") calls it.
- `flash` (flash-attn 2), `flash_3` (flash-attn 3), `sage` (SageAttention), `xformers`: diffusers' attention
  dispatcher (`attention_backend`), which only Wan's attention calls (the backbone config refuses them for
  CogVideoX). The dispatcher's `*_hub` backends download kernels at run time: the config refuses them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial

import torch
from diffusers.models.attention_dispatch import attention_backend
from torch.nn.attention import SDPBackend, sdpa_kernel

AttentionContext = Callable[[], contextlib.AbstractContextManager]

_SDPA_KERNELS = {
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa_math": SDPBackend.MATH,
}
_DISPATCHER = {"flash": "flash", "flash_3": "_flash_3", "sage": "sage", "xformers": "xformers"}
_RUNS_ON_CPU = ("sdpa", "sdpa_flash", "sdpa_math")  # torch has CPU kernels for these


def attention_context(name: str, device: torch.device | str) -> AttentionContext:
    """A factory of the context that makes the transformer's attention run `name` (a backbone config's
    `attention`) on `device`. Raises a ValueError naming the field when `device` or the installed packages cannot
    run it."""
    device = torch.device(device)
    if device.type != "cuda" and name not in _RUNS_ON_CPU:
        raise ValueError(f"attention: {name!r} runs on CUDA only, and this pipeline is on {device.type}: choose one "
                         f"of {list(_RUNS_ON_CPU)}")
    if name in _SDPA_KERNELS:
        return partial(sdpa_kernel, [_SDPA_KERNELS[name]])
    if name in _DISPATCHER:
        backend = partial(attention_backend, _DISPATCHER[name])
        try:
            with backend():  # diffusers checks the library and its version on entry
                pass
        except RuntimeError as err:
            raise ValueError(f"attention: {name!r} is not usable here: {err}") from None
        return backend
    return contextlib.nullcontext
