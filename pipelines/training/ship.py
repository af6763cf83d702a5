"""Shipping trained variants inside a backbone folder: each training export's transformer (and PadaLN) in float16
under `variants/<name>/`, beside the one VAE, text encoder and tokenizer they share, so an ablation re-evaluates
every variant without training; one of them is also the folder's own `transformer/`, the default.

    <backbone>/transformer/                  the shipped variant's transformer (float16)
    <backbone>/variants/<name>/transformer/  every variant's transformer (float16; git stores a repeat once)
    <backbone>/variants/<name>/padaln.safetensors   PadaLN variants only
    <backbone>/variants/<name>/variant.json  how it was trained and how it generates (`VariantInfo`)
    <backbone>/variants/shipped.json         which variant is the folder's own transformer
    <backbone>/padaln/padaln.safetensors     its PadaLN, when it has one (generation loads it with the transformer)
    <backbone>/vae/                          halved to float16 by `--default` too (the largest shared part; generation
                                             loads it at the backbone config's dtype)

The motion decoder (JAML) is left out: generation does not use it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from models.padaln import BACKBONE_PADALN_DIR, PADALN_WEIGHTS_NAME
from pipelines.training.config import TrainJobConfig
from pipelines.training.metrics import METRICS_NAME

VARIANTS_DIR = "variants"
VARIANT_FILE = "variant.json"
DEFAULT_FILE = "shipped.json"  # {"name": the variant that is the folder's own transformer}
TRANSFORMER_DIR = "transformer"
VAE_DIR = "vae"


@dataclass
class VariantInfo:
    """What a shipped variant is: how it was trained and the inference settings that match its training."""

    name: str
    train_config: str  # the configs/train/*.yaml it was trained with
    articulated_noise: bool  # it starts from articulated noise (trained on it)
    padaln: bool  # it carries PadaLN weights (pose-video conditioning)
    steps: int  # optimizer steps trained
    train_s: float  # seconds spent on its optimizer steps (the run's metrics `train_s`)


def _half_copy(source: Path, target: Path) -> None:
    """A safetensors file with its floating-point tensors in float16 and its metadata kept."""
    with safe_open(str(source), framework="pt") as f:
        metadata = f.metadata()
    tensors = {key: value.half() if value.is_floating_point() else value for key, value in load_file(source).items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata=metadata)


def _half_folder(source: Path, target: Path) -> None:
    """A diffusers model folder with its safetensors weights in float16 (its config copied unchanged); `target` may
    be `source` (written beside it, then swapped in)."""
    staging = target.with_name(target.name + ".half")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.suffix == ".safetensors":
            _half_copy(path, staging / path.name)
        elif path.is_file():
            shutil.copy2(path, staging / path.name)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def variant_from_run(config: TrainJobConfig, config_path: str | Path, name: str) -> VariantInfo:
    """A finished run's variant: its noise and PadaLN from the config, its steps and training seconds from the
    last line of the run's metrics."""
    metrics = config.run_dir / METRICS_NAME
    if not metrics.is_file():
        raise FileNotFoundError(f"train_config: no {METRICS_NAME} in {config.run_dir}; has the run started?")
    last = json.loads(metrics.read_text().strip().splitlines()[-1])
    if last["step"] != config.max_steps:
        raise ValueError(f"train_config: the run in {config.run_dir} stopped at step {last['step']} of "
                         f"{config.max_steps}; rerun the training job to finish it")
    return VariantInfo(name=name, train_config=str(config_path), articulated_noise=config.loss.articulated_noise,
                       padaln=config.padaln.enabled, steps=int(last["step"]), train_s=float(last.get("train_s", 0.0)))


def ship_variant(export: str | Path, backbone: str | Path, info: VariantInfo, default: bool = False) -> Path:
    """Copy a full fine-tune's export (its `transformer/`, and `padaln.safetensors` when trained with PadaLN)
    into `backbone/variants/<name>` in float16; with `default`, also make it (and its PadaLN) the folder's own, and
    store the folder's VAE in float16."""
    export, backbone = Path(export), Path(backbone)
    if not (export / TRANSFORMER_DIR / "config.json").is_file():
        raise FileNotFoundError(f"export: no {TRANSFORMER_DIR}/ in {export}; a `finetune: full` run exports it")
    if info.padaln != (export / PADALN_WEIGHTS_NAME).is_file():
        raise ValueError(f"padaln: the variant says {info.padaln} but {export} "
                         f"{'lacks' if info.padaln else 'has'} {PADALN_WEIGHTS_NAME}")
    folder = backbone / VARIANTS_DIR / info.name
    _half_folder(export / TRANSFORMER_DIR, folder / TRANSFORMER_DIR)
    if info.padaln:
        _half_copy(export / PADALN_WEIGHTS_NAME, folder / PADALN_WEIGHTS_NAME)
    (folder / VARIANT_FILE).write_text(json.dumps(asdict(info), indent=1) + "\n")
    if default:
        _half_folder(export / TRANSFORMER_DIR, backbone / TRANSFORMER_DIR)
        shutil.rmtree(backbone / BACKBONE_PADALN_DIR, ignore_errors=True)
        if info.padaln:
            _half_copy(export / PADALN_WEIGHTS_NAME, backbone / BACKBONE_PADALN_DIR / PADALN_WEIGHTS_NAME)
        (backbone / VARIANTS_DIR / DEFAULT_FILE).write_text(json.dumps({"name": info.name}) + "\n")
        _half_folder(backbone / VAE_DIR, backbone / VAE_DIR)
    return folder


def shipped_variants(backbone: str | Path) -> dict[str, tuple[Path, VariantInfo]]:
    """Every variant in a backbone folder: name -> (its folder, its info)."""
    root = Path(backbone) / VARIANTS_DIR
    if not root.is_dir():
        raise FileNotFoundError(f"backbone: no {VARIANTS_DIR}/ in {backbone}; `humanim backbone ship` writes it")
    found = {}
    for path in sorted(root.glob(f"*/{VARIANT_FILE}")):
        info = VariantInfo(**json.loads(path.read_text()))
        found[info.name] = (path.parent, info)
    return found


def default_variant(backbone: str | Path) -> str:
    """The name of the variant whose transformer is the folder's own."""
    path = Path(backbone) / VARIANTS_DIR / DEFAULT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"backbone: no {VARIANTS_DIR}/{DEFAULT_FILE} in {backbone}; "
                                "`humanim backbone ship --default` writes it")
    return json.loads(path.read_text())["name"]
