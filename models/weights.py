"""Small trained modules (PadaLN, the motion decoder) as one safetensors file each: weights plus constructor sizes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def save_module(module: nn.Module, path: Path, key: str, settings: dict[str, Any]) -> Path:
    """Write `module`'s state dict to `path`, its constructor arguments `settings` as metadata under `key`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.contiguous() for name, tensor in module.state_dict().items()}
    save_file(tensors, str(path), metadata={key: json.dumps(settings)})
    return path


def load_module(build: Callable[..., ModuleT], path: Path, key: str, what: str, writer: str) -> ModuleT:
    """Rebuild a module saved by `save_module` (on CPU, in the saved dtype); a missing file is an error naming
    `what` the weights are and the `writer` that writes them."""
    if not path.is_file():
        raise FileNotFoundError(f"No {what} weights at {path}; {writer} writes them there")
    with safe_open(str(path), framework="pt") as f:
        settings = json.loads(f.metadata()[key])
    module = build(**settings)
    tensors = load_file(str(path))
    module.to(next(tensor.dtype for tensor in tensors.values() if tensor.is_floating_point()))
    module.load_state_dict(tensors)
    return module
