"""Fine-tuning without Ray: the trained modules, the DeepSpeed engine, one optimizer step, checkpoints, the export.

The trained parts are the transformer's LoRA (or the whole transformer), PadaLN when enabled and the JAML motion
decoder; DeepSpeed wraps them as one module whose forward is `training_step`. The optimizer is torch's AdamW
(DeepSpeed's own Adam ops are compiled C++; torch's are not) with a linear warm-up, and the DeepSpeed JSON's
"auto" values are filled in from the train config. Every micro-step draws from its own generator, seeded from
(seed, step, rank, micro-step), so a resumed run draws what an uninterrupted one would without replaying RNG.

The export (`export_weights`) is what the animation pipeline reads: `pytorch_lora_weights.safetensors` (diffusers'
`load_lora_weights`), `padaln.safetensors` and `motion_decoder.safetensors`; a full fine-tune writes the
transformer in diffusers format under `transformer/` instead of the LoRA file.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from models.backbones import BackboneAdapter, adapter_class, build_adapter
from models.losses import LossConfig, LossOutput
from models.motion_decoder import MotionDecoder
from models.padaln import PadaLN
from pipelines.generation.animation import AnimationPipeline
from pipelines.io.training_rows import TrainingBatch
from pipelines.training.config import OptimizerSettings, TrainJobConfig
from pipelines.training.metrics import check_sinks
from pipelines.training.schedule import RowPlan, plan_rows
from pipelines.training.step import training_step

DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"
EXPORT_DIR = "export"
LOSS_TERMS = ("loss", "diffusion", "motion", "consistency")


def preflight(config: TrainJobConfig) -> RowPlan:
    """Everything checkable before a worker starts: the backbone folder, the DeepSpeed JSON against the config,
    the metric sinks' packages and the rows. Returns the row plan."""
    backbone = config.backbone_config()
    if backbone.path is not None:
        adapter_class(backbone.family).check_config_folder(backbone)
    deepspeed_settings(config)
    check_sinks(config.logging)
    return plan_rows(config)


def training_components(plan: RowPlan) -> frozenset[str]:
    """The backbone components a training worker loads: the transformer, the VAE (validation decodes), and the text
    and image encoders only when the rows lack their embeddings (`text: caption` rows embed captions on the fly)."""
    components = {"transformer", "vae"}
    if "text_embeds" not in plan.columns:
        components.add("text_encoder")
    if "image_embeds" not in plan.columns:
        components.add("image_encoder")  # a family without one (CogVideoX) loads none
    return frozenset(components)


def build_training_adapter(config: TrainJobConfig, plan: RowPlan, device: torch.device | str) -> BackboneAdapter:
    """The adapter a training worker uses, with `training_components` only. Guided validation on rows that carry
    text embeddings still needs the empty prompt's: it is embedded once, then the text encoder is freed."""
    components = training_components(plan)
    validation = config.validation
    guided = validation.every_steps is not None and bool(plan.validation) and validation.guidance_scale > 1
    if "text_encoder" in components or not guided:
        return build_adapter(config.backbone_config(), device, components)
    adapter = build_adapter(config.backbone_config(), device, components | {"text_encoder"})
    adapter.drop_text_encoder(keep_prompts=[""], reason="the training rows carry text embeddings")
    return adapter


class TrainedModules(nn.Module):
    """What DeepSpeed wraps: the transformer, PadaLN (optional) and the motion decoder; forward is one micro-step's
    training objective. The adapter around the transformer (VAE, schedule, conditioning) is not a submodule."""

    def __init__(
        self, adapter: BackboneAdapter, decoder: MotionDecoder, padaln: PadaLN | None, loss: LossConfig
    ) -> None:
        super().__init__()
        self.transformer = adapter.transformer
        self.decoder = decoder
        self.padaln = padaln
        self.adapter = adapter
        self.loss = loss

    def forward(self, batch: TrainingBatch, generator: torch.Generator) -> LossOutput:
        return training_step(self.adapter, self.decoder, batch, self.loss, generator, self.padaln)


def build_modules(config: TrainJobConfig, adapter: BackboneAdapter) -> tuple[AnimationPipeline, TrainedModules]:
    """Make `adapter` (built from `config.backbone_config()`) trainable: frozen but for a fresh LoRA (or all of the
    transformer, with fresh weights under `transformer_init: random`), with PadaLN and the decoder, seeded by
    `config.seed`; and an animation pipeline over them for validation (PadaLN attached through it)."""
    for component in adapter.pipeline.components.values():
        if isinstance(component, nn.Module):
            component.requires_grad_(False)
    torch.manual_seed(config.seed)
    if config.transformer_init == "random":
        trained = adapter.transformer
        adapter.pipeline.transformer = type(trained).from_config(trained.config).to(trained.device, trained.dtype)
    if config.uses_lora:
        adapter.add_lora()
    else:
        adapter.transformer.requires_grad_(True)
    if config.gradient_checkpointing:
        adapter.transformer.enable_gradient_checkpointing()
    padaln = PadaLN.for_adapter(adapter, config.padaln.mlp_dim) if config.padaln.enabled else None
    pipeline = AnimationPipeline(adapter, padaln)
    decoder = MotionDecoder(adapter.latent_channels, config.motion_decoder_channels).to(adapter.device, adapter.dtype)
    return pipeline, TrainedModules(adapter, decoder, padaln, config.loss)


def parameter_groups(modules: TrainedModules, config: TrainJobConfig) -> list[dict[str, Any]]:
    """One AdamW group per trained part, each with its learning rate."""
    settings = config.optimizer
    groups = [{"params": [p for p in modules.transformer.parameters() if p.requires_grad], "lr": settings.lr}]
    if modules.padaln is not None:
        groups.append({"params": list(modules.padaln.parameters()), "lr": settings.padaln_lr or settings.lr})
    groups.append({"params": list(modules.decoder.parameters()), "lr": settings.motion_decoder_lr or settings.lr})
    return groups


# The keys of a DeepSpeed JSON that may say "auto", and what fills them in.
def _auto_values(config: TrainJobConfig) -> dict[tuple[str, ...], Any]:
    dtype = config.backbone_config().dtype
    return {
        ("train_batch_size",): config.batch_size,
        ("train_micro_batch_size_per_gpu",): config.micro_batch_size,
        ("gradient_accumulation_steps",): config.gradient_accumulation_steps,
        ("gradient_clipping",): config.optimizer.max_grad_norm,
        ("bf16", "enabled"): dtype == "bfloat16",
        ("fp16", "enabled"): dtype == "float16",
    }


def deepspeed_settings(config: TrainJobConfig) -> dict[str, Any]:
    """The DeepSpeed JSON with its "auto" values filled in; explicit values must agree with the train config."""
    settings = json.loads(config.deepspeed.read_text())
    for section in ("optimizer", "scheduler"):
        if section in settings:
            raise ValueError(
                f"deepspeed: remove the {section!r} section of {config.deepspeed}; the job builds torch's AdamW and "
                "its warm-up from the train config's `optimizer:`"
            )
    for keys, value in _auto_values(config).items():
        parent = settings
        for key in keys[:-1]:
            parent = parent.setdefault(key, {})
        given = parent.get(keys[-1], "auto")
        if given == "auto":
            parent[keys[-1]] = value
        elif given != value:
            raise ValueError(f"deepspeed: {'.'.join(keys)} is {given!r} in {config.deepspeed} but the train config "
                             f"gives {value!r}; set it to \"auto\"")

    def check(node: Any, path: str) -> None:
        if node == "auto":
            raise ValueError(f"deepspeed: {path} is 'auto' but nothing in the train config fills it in")
        if isinstance(node, dict):
            for key, value in node.items():
                check(value, f"{path}.{key}" if path else key)

    check(settings, "")
    return settings


def lr_factor(step: int, warmup_steps: int, decay_steps: int, max_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) over the base rate: a linear warm-up over
    `warmup_steps`, then 1, then a linear fall over the last `decay_steps` of `max_steps` to 1/decay_steps (the
    last step still moves)."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    decay = min(1.0, (max_steps - step) / decay_steps) if decay_steps else 1.0
    return min(warm, decay)


def lr_schedule(
    settings: OptimizerSettings, max_steps: int
) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LambdaLR]:
    """The optimizer settings' warmup-stable-decay schedule (`lr_factor`) for a run of `max_steps`."""

    def factor(step: int) -> float:
        return lr_factor(step, settings.warmup_steps, settings.decay_steps, max_steps)

    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _skip_cpu_shared_memory_comm() -> None:
    """DeepSpeed JIT-compiles a shared-memory allreduce op when it sets up communication on CPU (minutes of C++
    compilation); mark it unavailable so CPU runs use plain gloo collectives and need no compiler."""
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def build_engine(modules: TrainedModules, config: TrainJobConfig) -> Any:
    """The DeepSpeed engine over `modules` (torch.distributed must already be initialized, e.g. by Ray Train)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        _skip_cpu_shared_memory_comm()
    settings = config.optimizer
    optimizer = torch.optim.AdamW(
        parameter_groups(modules, config), lr=settings.lr, betas=settings.betas, eps=settings.eps,
        weight_decay=settings.weight_decay,
    )
    engine, *_ = deepspeed.initialize(
        model=modules, optimizer=optimizer, lr_scheduler=lr_schedule(settings, config.max_steps),
        config=deepspeed_settings(config),
    )
    return engine


# Steps


def step_generator(seed: int, step: int, rank: int, micro: int) -> torch.Generator:
    """The CPU generator of one micro-step: noise, gamma and timesteps depend on nothing else."""
    state = np.random.SeedSequence([seed, step, rank, micro]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def _collective_device() -> torch.device:
    """Where the process group's collectives take tensors: NCCL only takes CUDA tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def mean_over_workers(values: list[float]) -> list[float]:
    """The mean of each value over all workers (the values themselves without torch.distributed)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return (tensor / dist.get_world_size()).tolist()


def from_workers(values: list[float]) -> list[list[float]]:
    """`values` (the same count on every worker) from every worker, by rank."""
    if not dist.is_initialized():
        return [values]
    device = _collective_device()
    gathered = [torch.zeros(len(values), dtype=torch.float64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, torch.tensor(values, dtype=torch.float64, device=device))
    return [tensor.tolist() for tensor in gathered]


def per_worker(value: float) -> list[float]:
    """`value` from every worker, by rank."""
    return [values[0] for values in from_workers([value])]


def optimizer_step(engine: Any, batches: list[TrainingBatch], config: TrainJobConfig, step: int, rank: int
                   ) -> dict[str, float]:
    """One optimizer step over this worker's micro-batches (`step` counts from 1): the loss terms averaged over
    micro-batches and workers, and the learning rate the step used."""
    lr = engine.get_lr()[0]
    totals = np.zeros(len(LOSS_TERMS))
    for micro, batch in enumerate(batches):
        output = engine(batch, step_generator(config.seed, step, rank, micro))
        engine.backward(output.total)
        engine.step()
        metrics = output.metrics()
        totals += [metrics[name] for name in LOSS_TERMS]
    return {**dict(zip(LOSS_TERMS, mean_over_workers((totals / len(batches)).tolist()))), "lr": lr}


def peak_memory_mb() -> float:
    """This process's peak memory: CUDA allocations on a GPU, else the resident set size."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Checkpoints


@dataclass
class TrainState:
    """Where a run stands: optimizer steps done (which fixes the epoch and the rows consumed in it) and the
    seconds spent on them, over every resume."""

    step: int = 0
    train_s: float = 0.0


def _rng_state() -> dict[str, Any]:
    _, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": position, "has_gauss": has_gauss,
                  "cached_gaussian": cached},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_file(directory: Path, rank: int) -> Path:
    return directory / f"rng_rank{rank}.pt"


@contextmanager
def gathered(engine: Any) -> Iterator[None]:
    """Under ZeRO-3, every worker's shards of the trained parameters gathered (all workers must enter)."""
    if engine.zero_optimization_stage() < 3:
        yield
        return
    import deepspeed

    trained = [p for p in engine.module.parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters(trained, modifier_rank=None):
        yield


def export_weights(modules: TrainedModules, directory: Path) -> None:
    """The trained weights in the animation pipeline's formats (see the module docstring)."""
    if getattr(modules.transformer, "peft_config", None):
        modules.adapter.save_lora(directory)
    else:
        modules.transformer.save_pretrained(directory / "transformer")
    if modules.padaln is not None:
        modules.padaln.save(directory)
    modules.decoder.save(directory)


def save_checkpoint(engine: Any, directory: Path, state: TrainState, rank: int) -> None:
    """Every worker writes its DeepSpeed shards and RNG state into its own `directory` (Ray Train merges them);
    rank 0 also writes the export. Frozen backbone weights are left out: the config rebuilds them."""
    engine.save_checkpoint(
        str(directory / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, client_state={"train_state": asdict(state)},
        exclude_frozen_parameters=True,
    )
    torch.save(_rng_state(), _rng_file(directory, rank))
    with gathered(engine):
        if rank == 0:
            export_weights(engine.module, directory / EXPORT_DIR)


def load_checkpoint(engine: Any, directory: Path, rank: int) -> TrainState:
    """Restore the engine (weights, optimizer, schedule), this worker's RNG and the train state."""
    _, client_state = engine.load_checkpoint(str(directory / DEEPSPEED_DIR), tag=DEEPSPEED_TAG,
                                             load_module_strict=False)
    if client_state is None:
        raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory / DEEPSPEED_DIR}")
    rng = _rng_file(directory, rank)
    if rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=True))
    return TrainState(**client_state["train_state"])


def publish(write: Callable[[Path], None], target: Path) -> None:
    """Write a folder with `write(folder)` and move it to `target` whole: readers see the old folder or the new
    one, never a partial one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}"
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        retired = target.parent / f".{target.name}.old.{uuid.uuid4().hex}"
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired)
    else:
        os.replace(staging, target)


def final_export(engine: Any, target: Path, rank: int) -> None:
    """The trained weights published to `target` by rank 0 (every worker must call this under ZeRO-3)."""
    with gathered(engine):
        if rank == 0:
            publish(lambda folder: export_weights(engine.module, folder), target)


@contextmanager
def eval_mode(engine: Any) -> Iterator[None]:
    """Eval mode (BatchNorm statistics frozen) for validation, back to train mode after."""
    engine.eval()
    try:
        yield
    finally:
        engine.train()
