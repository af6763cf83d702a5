"""DynamiCtrl's Pose-adaptive LayerNorm (PadaLN), hooked into any backbone adapter's DiT blocks.

The driving pose video, VAE-encoded like any video, has its channels repeated to the patch embedding's input
width and goes through the backbone's own patch embedding. Before every block, an MLP of the time embedding
gives (scale, shift, gate) and the video tokens become `h + gate * (LN(pose) * (1 + scale) + shift)`. The
output layers start at zero, so an untrained PadaLN leaves the backbone's output bitwise unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .backbones.base import BackboneAdapter
from .weights import load_module, save_module

PADALN_WEIGHTS_NAME = "padaln.safetensors"
BACKBONE_PADALN_DIR = "padaln"  # <backbone folder>/padaln/: the PadaLN its own transformer was trained with


def backbone_padaln(folder: str | Path) -> Path | None:
    """The PadaLN folder that belongs to a backbone folder's own transformer, if it has one."""
    path = Path(folder) / BACKBONE_PADALN_DIR
    return path if (path / PADALN_WEIGHTS_NAME).is_file() else None


class PoseModulation(nn.Module):
    """One block's PadaLN: the time embedding gives scale, shift and gate for the normalized pose tokens."""

    def __init__(self, hidden_size: int, time_embedding_dim: int, mlp_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.SiLU(), nn.Linear(time_embedding_dim, mlp_dim), nn.SiLU(), nn.Linear(mlp_dim, 3 * hidden_size)
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, hidden_states: torch.Tensor, pose_tokens: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale, shift, gate = self.mlp(temb.to(self.mlp[-1].weight.dtype)).unsqueeze(1).chunk(3, dim=-1)
        return (hidden_states + gate * (pose_tokens * (1 + scale) + shift)).to(hidden_states.dtype)


class PadaLN(nn.Module):
    """PadaLN for every DiT block of a backbone; `attach` hooks it in, `pose` conditions forwards on a pose video.

    The hooks keep the last forward's pose tokens and time embedding; with gradient checkpointing, run the
    backward pass before the next transformer forward, since the blocks are recomputed from that state.
    """

    def __init__(
        self, num_blocks: int, hidden_size: int, time_embedding_dim: int, mlp_dim: int = 256, eps: float = 1e-6
    ):
        super().__init__()
        self.settings = {
            "num_blocks": num_blocks,
            "hidden_size": hidden_size,
            "time_embedding_dim": time_embedding_dim,
            "mlp_dim": mlp_dim,
            "eps": eps,
        }
        self.norm = nn.LayerNorm(hidden_size, eps=eps, elementwise_affine=False)
        self.modulations = nn.ModuleList(
            PoseModulation(hidden_size, time_embedding_dim, mlp_dim) for _ in range(num_blocks)
        )
        self._adapter: BackboneAdapter | None = None
        self._handles: list[RemovableHandle] = []
        self._pose: torch.Tensor | None = None
        self._tokens: torch.Tensor | None = None
        self._temb: torch.Tensor | None = None

    @classmethod
    def for_adapter(cls, adapter: BackboneAdapter, mlp_dim: int = 256) -> PadaLN:
        """A fresh PadaLN sized for `adapter`'s transformer, on its device and dtype."""
        padaln = cls(len(adapter.blocks), adapter.hidden_size, adapter.time_embedding_dim, mlp_dim)
        return padaln.to(adapter.device, adapter.dtype)

    # Hooks

    def attach(self, adapter: BackboneAdapter) -> PadaLN:
        """Hook into `adapter`'s transformer; it is unchanged until a forward runs inside `pose(...)`."""
        if self._adapter is not None:
            raise RuntimeError("PadaLN is already attached; call detach() first")
        expected = (len(adapter.blocks), adapter.hidden_size, adapter.time_embedding_dim)
        actual = tuple(self.settings[k] for k in ("num_blocks", "hidden_size", "time_embedding_dim"))
        if actual != expected:
            raise ValueError(f"PadaLN of (blocks, hidden, time) = {actual} cannot attach to a backbone of {expected}")
        self._adapter = adapter
        self._handles = [
            adapter.transformer.register_forward_pre_hook(self._embed_pose),
            adapter.watch_time_embedding(self._store_time_embedding),
            *(
                block.register_forward_pre_hook(partial(self._modulate, index), with_kwargs=True)
                for index, block in enumerate(adapter.blocks)
            ),
        ]
        return self

    def detach(self) -> None:
        """Remove every hook: the transformer computes exactly what it did before `attach`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._adapter = self._pose = self._tokens = self._temb = None

    @contextmanager
    def pose(self, pose_latents: torch.Tensor) -> Iterator[None]:
        """Condition every transformer forward inside the block on pose latents `[B, F_lat, C, h, w]`."""
        if self._adapter is None:
            raise RuntimeError("attach PadaLN to a backbone adapter before conditioning on a pose")
        self._pose = pose_latents
        try:
            yield
        finally:
            self._pose = None

    def _embed_pose(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._pose is None:
            self._tokens = None
            return
        width = self._adapter.patch_embed_channels
        channels = self._pose.shape[2]
        repeated = self._pose.repeat(1, 1, -(-width // channels), 1, 1)[:, :, :width]
        self._tokens = self.norm(self._adapter.patchify(repeated))

    def _store_time_embedding(self, temb: torch.Tensor) -> None:
        self._temb = temb

    def _modulate(
        self, index: int, block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if self._tokens is None:
            return None
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": self._modulated(index, kwargs["hidden_states"])}
        return (self._modulated(index, args[0]), *args[1:]), kwargs

    def _modulated(self, index: int, hidden_states: torch.Tensor) -> torch.Tensor:
        tokens = self._tokens
        if tokens.shape[1] != hidden_states.shape[1]:
            raise ValueError(
                f"pose latents give {tokens.shape[1]} tokens but the video has {hidden_states.shape[1]}: "
                "pose and video latents need the same frames and size"
            )
        # Classifier-free guidance runs conditional and unconditional samples as one batch.
        tokens = tokens.repeat(hidden_states.shape[0] // tokens.shape[0], 1, 1)
        return self.modulations[index](hidden_states, tokens, self._temb)

    # Weights

    def save(self, directory: str | Path) -> Path:
        """Write `padaln.safetensors` (weights and sizes) into `directory`, next to the LoRA weights."""
        return save_module(self, Path(directory) / PADALN_WEIGHTS_NAME, "padaln", self.settings)

    @classmethod
    def load(cls, directory: str | Path) -> PadaLN:
        """Rebuild a PadaLN saved by `save` (on CPU, in the saved dtype)."""
        return load_module(cls, Path(directory) / PADALN_WEIGHTS_NAME, "padaln", "PadaLN", "PadaLN.save(directory)")


def mask_reference(image: torch.Tensor, mask: torch.Tensor, fill: float = -1.0) -> torch.Tensor:
    """Region-level control: keep the reference image `[B, 3, H, W]` (in [-1, 1]) where `mask` is 1, paint `fill`
    (black) elsewhere. The masked image is what gets VAE-encoded as the image condition, so the text describes
    the masked-out region. `mask` is `[B, 1, H, W]`, `[B, H, W]` or `[H, W]` with values in [0, 1]."""
    if mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"mask: size {tuple(mask.shape[-2:])} differs from the image's {tuple(image.shape[-2:])}")
    if mask.min() < 0 or mask.max() > 1:
        raise ValueError(f"mask: values must lie in [0, 1], got [{mask.min().item()}, {mask.max().item()}]")
    if mask.dim() < image.dim():
        mask = mask.unsqueeze(-3)
    mask = mask.to(image.dtype)
    return image * mask + fill * (1 - mask)
