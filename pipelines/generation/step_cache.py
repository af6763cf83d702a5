"""Step caching for the animation pipeline: diffusers' First Block Cache on the backbone's transformer, with one
cache per denoising call site (window x guidance branch), so a step of one window never reuses another's blocks.

The cache itself is diffusers' (`diffusers.hooks.FirstBlockCacheConfig`, the dynamic caching of ParaAttention);
this module only switches it on for a `StepCacheSettings`, names the call sites and empties the caches between
videos.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from diffusers.hooks import FirstBlockCacheConfig
from torch import nn

from models.backbones.config import StepCacheSettings


def enable_step_cache(transformer: nn.Module, settings: StepCacheSettings | None) -> None:
    """Switch caching on as `settings` say (None: leave the transformer as it is)."""
    if settings is not None:  # kind: first_block, the only one its Literal admits
        transformer.enable_cache(FirstBlockCacheConfig(threshold=settings.threshold))


def is_caching(transformer: nn.Module) -> bool:
    return bool(getattr(transformer, "is_cache_enabled", False))


def reset_step_cache(transformer: nn.Module) -> None:
    """Forget every cached residual (between videos: a new video's first step always runs every block)."""
    if is_caching(transformer):
        transformer._reset_stateful_cache()  # what diffusers' own pipelines call at the end of a video


@contextlib.contextmanager
def call_site(transformer: nn.Module, name: str) -> Iterator[None]:
    """The transformer calls inside belong to the cache named `name` (no-op without caching)."""
    if not is_caching(transformer):
        yield
        return
    with transformer.cache_context(name):
        yield
