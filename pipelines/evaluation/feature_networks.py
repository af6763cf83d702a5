"""Feature networks for the evaluation metrics, loaded from local weights only (nothing is downloaded): LPIPS
(AlexNet/VGG-16 from safetensors), Inception-v3 (FID, FID-VID) and I3D (FVD) as TorchScript modules. Conventions
are in `pipelines.evaluation.metrics`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file

from models.paths import ProjectPath

# Feature networks


def require_file(path: Path, field: str, what: str) -> Path:
    """`path`, or a FileNotFoundError naming the config field, the path and what belongs there."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{field}: {path} not found; put {what} there (nothing is downloaded)")
    return Path(path)


LPIPS_BACKBONE_WHAT = (
    "the {net} convolution weights as safetensors with torchvision's key names (features.<i>.weight/bias), "
    "converted from torchvision's ImageNet checkpoint"
)
LPIPS_LINEAR_WHAT = (
    "the LPIPS v0.1 linear layers for {net} as safetensors (keys lin0.model.1.weight .. lin4.model.1.weight), "
    "converted from the lpips package's weights/v0.1/{net}.pth"
)
# torchvision's `features` layers: ("C", in, out, kernel, stride, padding), ("M",) max-pool 3/2 (AlexNet) or
# 2/2 (VGG); LPIPS reads the ReLU after each tapped convolution.
_ALEX = [("C", 3, 64, 11, 4, 2), ("M",), ("C", 64, 192, 5, 1, 2), ("M",), ("C", 192, 384, 3, 1, 1),
         ("C", 384, 256, 3, 1, 1), ("C", 256, 256, 3, 1, 1)]
_VGG16 = [("C", 3, 64, 3, 1, 1), ("C", 64, 64, 3, 1, 1), ("M",), ("C", 64, 128, 3, 1, 1), ("C", 128, 128, 3, 1, 1),
          ("M",), *[("C", c, 256, 3, 1, 1) for c in (128, 256, 256)], ("M",),
          *[("C", c, 512, 3, 1, 1) for c in (256, 512, 512)], ("M",), *[("C", 512, 512, 3, 1, 1)] * 3]
LPIPS_NETS: dict[str, tuple[list[tuple], tuple[int, ...], int]] = {
    # layers, indices (in torchvision's `features`) of the tapped ReLUs, max-pool kernel
    "alex": (_ALEX, (1, 4, 7, 9, 11), 3),
    "vgg": (_VGG16, (3, 8, 15, 22, 29), 2),
}
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class LpipsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    net: Literal["alex", "vgg"] = "alex"
    backbone_weights: ProjectPath = Field(description="AlexNet/VGG-16 `features` weights (.safetensors, torchvision names)")
    linear_weights: ProjectPath = Field(description="LPIPS v0.1 linear layers (.safetensors, lpips names)")


class Lpips(torch.nn.Module):
    """LPIPS v0.1 on AlexNet or VGG-16 features (torchvision's `features` layout, so its weights load as is)."""

    def __init__(self, net: Literal["alex", "vgg"]) -> None:
        super().__init__()
        layers, self.taps, pool = LPIPS_NETS[net]
        modules: list[torch.nn.Module] = []
        for spec in layers:
            if spec[0] == "M":
                modules.append(torch.nn.MaxPool2d(pool, 2))
            else:
                modules += [torch.nn.Conv2d(*spec[1:4], stride=spec[4], padding=spec[5]), torch.nn.ReLU()]
        self.features = torch.nn.Sequential(*modules)
        widths = [self.features[index - 1].out_channels for index in self.taps]
        self.lins = torch.nn.ModuleList(torch.nn.Conv2d(width, 1, 1, bias=False) for width in widths)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    @classmethod
    def load(cls, config: LpipsConfig, device: str | torch.device = "cpu") -> Lpips:
        """LPIPS with the weights of `config`; a clear error when a file is missing or holds other keys."""
        model = cls(config.net)
        name = {"alex": "AlexNet", "vgg": "VGG-16"}[config.net]
        backbone = load_file(require_file(config.backbone_weights, "lpips.backbone_weights",
                                          LPIPS_BACKBONE_WHAT.format(net=name)))
        linear = load_file(require_file(config.linear_weights, "lpips.linear_weights",
                                        LPIPS_LINEAR_WHAT.format(net=config.net)))
        state = {key: value for key, value in backbone.items() if key.startswith("features.")}
        state.update({f"lins.{key[3]}.weight": value for key, value in linear.items()
                      if key.startswith("lin") and key.endswith(".model.1.weight")})
        expected = set(model.state_dict()) - {"shift", "scale"}
        if set(state) != expected:
            raise ValueError(
                f"lpips weights: {config.backbone_weights} and {config.linear_weights} do not fit LPIPS-{config.net}: "
                f"missing {sorted(expected - set(state))}, unexpected {sorted(set(state) - expected)}"
            )
        model.load_state_dict(state, strict=False)
        return model.eval().to(device)

    def _layers(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The tapped ReLU outputs (the last layer is the last tap), unit-normalised over channels."""
        x, outputs = (images - self.shift) / self.scale, []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x / (x.square().sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return outputs

    @torch.no_grad()
    def forward(self, generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Distances `[N]` between images `[N, 3, H, W]` in [-1, 1]."""
        pairs = zip(self._layers(generated), self._layers(reference))
        return sum(lin((a - b).square()).mean(dim=(1, 2, 3)) for lin, (a, b) in zip(self.lins, pairs))


class FeatureNetworkConfig(BaseModel):
    """A TorchScript feature network: `features = module(inputs, **kwargs)`, flattened to `[N, D]`.

    Inception (FID, FID-VID): inputs are frames `[N, 3, H, W]`; I3D (FVD): inputs are videos `[N, 3, T, H, W]`.
    Pixels are float32 mapped linearly from [0, 255] to `input_range`, resized (bilinear) to `resize` (H, W) if
    set, else passed at the video's size for the module to resize.
    """

    model_config = ConfigDict(extra="forbid")

    path: ProjectPath = Field(description="TorchScript file (torch.jit.save)")
    input_range: tuple[float, float] = (0.0, 255.0)
    resize: tuple[int, int] | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the call")
    batch_size: int = Field(32, ge=1, description="frames (Inception) or videos (I3D) per call")
    num_frames: int | None = Field(None, ge=1, description="I3D: the first frames of each video (None: all)")


INCEPTION_WHAT = "a TorchScript Inception-v3 (the FID weights) that maps frames [N, 3, H, W] to pool features [N, 2048]"
I3D_WHAT = "a TorchScript I3D (Kinetics-400) that maps videos [N, 3, T, H, W] to features [N, 400]"


class FeatureNetwork:
    """A loaded TorchScript feature network with its input convention."""

    def __init__(self, config: FeatureNetworkConfig, field: str, what: str, device: str | torch.device) -> None:
        self.config = config
        self.device = torch.device(device)
        self.module = torch.jit.load(str(require_file(config.path, field, what)), map_location=self.device).eval()

    def _inputs(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 `[..., H, W, 3]` -> float `[..., 3, H, W]` in `input_range`, resized."""
        low, high = self.config.input_range
        x = torch.from_numpy(np.asarray(frames)).to(self.device).movedim(-1, -3).float() * ((high - low) / 255) + low
        if self.config.resize is not None:
            x = F.interpolate(x.flatten(0, -4), size=self.config.resize, mode="bilinear", align_corners=False)
            x = x.view(*frames.shape[:-3], 3, *self.config.resize)
        return x

    @torch.no_grad()
    def frame_features(self, frames: np.ndarray) -> np.ndarray:
        """`[T, D]` for frames `[T, H, W, 3]`."""
        step = self.config.batch_size
        chunks = [self.module(self._inputs(frames[i : i + step]), **self.config.kwargs)
                  for i in range(0, len(frames), step)]
        return torch.cat([chunk.flatten(1) for chunk in chunks]).double().cpu().numpy()

    @torch.no_grad()
    def video_features(self, frames: np.ndarray) -> np.ndarray:
        """`[D]` for one video `[T, H, W, 3]` (its first `num_frames` frames)."""
        count = self.config.num_frames or len(frames)
        if len(frames) < count:
            raise ValueError(f"i3d.num_frames: {count} frames needed, the video has {len(frames)}")
        video = self._inputs(frames[:count]).movedim(0, 1)[None]  # [1, 3, T, H, W]
        return self.module(video, **self.config.kwargs).flatten().double().cpu().numpy()
