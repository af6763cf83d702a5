"""Regional compilation of the transformer's repeated DiT block (the backbone config's `compile`).

Each block's `forward` goes through `torch.compile`. The blocks are instances of one class, so they share one
compiled graph (torch treats a module's parameters as graph inputs): compile time is one block's, not the
transformer's. The module's `forward`, not the module: diffusers' `compile_repeated_blocks` (`nn.Module.compile`)
would compile the module call with its forward hooks, and PadaLN's hooks pass each block's index, which makes
torch compile a graph per block until its recompile limit (8) and then run the rest uncompiled; diffusers'
CogVideoX transformer also names no `_repeated_blocks`. Hooks stay outside the compiled region: PadaLN's
pre-hooks, and the step cache's, which wrap the compiled `forward` when caching is enabled after compiling.
"""

from __future__ import annotations

import torch
from torch import nn

from models.backbones.config import CompileSettings


def compile_blocks(blocks: nn.ModuleList, settings: CompileSettings) -> None:
    """Compile every block's forward as `settings` say (mode off: leave them as they are)."""
    if settings.mode == "blocks":
        for block in blocks:
            block.forward = torch.compile(block.forward, backend=settings.backend)
