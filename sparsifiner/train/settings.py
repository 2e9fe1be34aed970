"""Training settings: one frozen dataclass for the run, one per phase inside it.

``TrainSettings`` holds everything that changes the trained weights: model, data,
global batch, seed, precision, the Sparsifiner settings (keep rate, thresholds), and a
``PhaseSettings`` for each of the three phases (teacher, phase1, phase2). Only the CLI
builds it, from a YAML recipe plus flags (``sparsifiner.train.recipe``); checkpoints
store it as JSON. Runtime choices that do not change the result (output folder,
progress bars, resume) are arguments of ``sparsifiner.train.run_training`` instead.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from sparsifiner.errors import SparsifinerError
from sparsifiner.settings import DEMO_NAME, SparsifinerSettings

PHASES = ("teacher", "phase1", "phase2")
REGULARISERS = ("l2", "l1")
ATTN_LOSSES = ("mse", "kl")
REDUCTIONS = ("sum", "mean")
AMP_MODES = ("auto", "off", "bf16", "fp16")


@dataclass(frozen=True)
class PhaseSettings:
    """Optimiser, schedule and loss of one phase (fields a phase does not use are ignored).

    Schedule (all phases): AdamW; the learning rate rises linearly from warmup_lr to
        lr over warmup_epochs, then follows a cosine down to min_lr at the last step.
        Biases and norm weights (1-D parameters) get no weight decay.
    teacher: cross-entropy with label_smoothing.
    phase1 (predictor only, dense attention): attention distillation of the
        predictor's scores S against the dense attention probabilities of the non-CLS
        rows, averaged over blocks. attn_loss "mse" (the paper) or "kl" (the code's
        variant: KL(dense || softmax(S)) per row). attn_reduction "sum" (the authors'
        code: summed over images, heads, rows and keys of the global batch; the sum is
        kept exact under gradient accumulation and data parallel) or "mean" (over all
        elements; batch-size independent). reg "l2": AdamW weight decay (the paper);
        "l1": W_up gets no weight decay but the penalty l1_weight * sum|W_up| (all
        blocks), the Table 1 ablation.
    phase2 (backbone, sparse attention): ce_weight * CE(labels) + kl_weight *
        KL(teacher || student logits) (batch mean, DynamicViT form) + token_weight *
        MSE(student, teacher final patch tokens after the last norm).
    """

    epochs: int = 5
    lr: float = 3e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    grad_clip: Optional[float] = None
    label_smoothing: float = 0.1
    reg: str = "l2"
    l1_weight: float = 1e-4
    attn_loss: str = "mse"
    attn_reduction: str = "sum"
    ce_weight: float = 1.0
    kl_weight: float = 0.5
    token_weight: float = 0.5

    def __post_init__(self):
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise SparsifinerError(f"epochs must be a non-negative integer, got {self.epochs!r}")
        for name in ("lr", "min_lr", "warmup_lr", "weight_decay", "l1_weight", "warmup_epochs",
                     "label_smoothing", "ce_weight", "kl_weight", "token_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise SparsifinerError(f"{name} must be a number >= 0, got {value!r}")
        if self.lr <= 0:
            raise SparsifinerError(f"lr must be > 0, got {self.lr}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise SparsifinerError(f"grad_clip must be > 0 or null, got {self.grad_clip}")
        _check_choice("reg", self.reg, REGULARISERS)
        _check_choice("attn_loss", self.attn_loss, ATTN_LOSSES)
        _check_choice("attn_reduction", self.attn_reduction, REDUCTIONS)


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a training run's weights.

    model: a timm ViT name, or "demo" for the bundled small ViT (sparsifiner.model.zoo).
    timm_kwargs: extra keyword arguments of timm.create_model for a named model
        (e.g. {patch_size: 4, embed_dim: 64, depth: 2, num_heads: 1}); unused by "demo".
    data: "digits" (bundled, no download) or an ImageFolder root with train/ and val/.
    pretrained: load timm's pretrained weights for the first phase (needs network).
    checkpoint: local weights the first phase starts from: a dense model (ours or a
        timm state dict in .safetensors) for teacher/phase1, a phase-1 Sparsifiner
        checkpoint for phase2. Without it a phase reads the previous phase's output.
    batch_size: global images per optimiser step, over all processes and accumulation
        steps; each process loads batch_size / (world_size * accum_steps).
    amp: mixed precision on GPU: "auto" (bf16 where supported, else fp16 with a grad
        scaler), "bf16", "fp16" or "off". Always off on CPU.
    augment: random augmentation of training images (digits: small affine warps;
        ImageFolder: timm's training transform).
    limit: use only the first ``limit`` images of each split (smoke tests).
    """

    model: str = DEMO_NAME
    timm_kwargs: dict = field(default_factory=dict)
    data: Optional[str] = "digits"
    img_size: Optional[int] = None
    pretrained: bool = False
    checkpoint: Optional[str] = None
    batch_size: int = 32
    accum_steps: int = 1
    eval_batch_size: int = 256
    workers: int = 0
    seed: int = 0
    amp: str = "auto"
    augment: bool = True
    limit: Optional[int] = None
    log_every: int = 10
    sparsifiner: SparsifinerSettings = field(default_factory=SparsifinerSettings)
    teacher: PhaseSettings = field(default_factory=PhaseSettings)
    phase1: PhaseSettings = field(default_factory=PhaseSettings)
    phase2: PhaseSettings = field(default_factory=PhaseSettings)

    def __post_init__(self):
        for name in ("batch_size", "accum_steps", "eval_batch_size", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SparsifinerError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise SparsifinerError(f"workers must be an integer >= 0, got {self.workers!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise SparsifinerError(f"limit must be a positive integer or null, got {self.limit!r}")
        _check_choice("amp", self.amp, AMP_MODES)
        if not isinstance(self.timm_kwargs, dict):
            raise SparsifinerError(f"timm_kwargs must be a mapping, got {self.timm_kwargs!r}")
        if self.batch_size % self.accum_steps:
            raise SparsifinerError(f"batch_size {self.batch_size} is not divisible by accum_steps {self.accum_steps}")

    def phase(self, name: str) -> PhaseSettings:
        _check_choice("phase", name, PHASES)
        return getattr(self, name)

    def replace(self, **changes) -> "TrainSettings":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainSettings":
        """Build from a nested dict (a recipe); unknown keys are an error that names them."""
        if not isinstance(data, dict):
            raise SparsifinerError("a training recipe must be a mapping of settings")
        data = dict(data)
        _check_keys(cls, data, "")
        for name in PHASES:
            if name in data:
                sub = data[name] or {}
                if not isinstance(sub, dict):
                    raise SparsifinerError(f"recipe key {name!r} must be a mapping")
                _check_keys(PhaseSettings, sub, f"{name}.")
                data[name] = PhaseSettings(**sub)
        if "sparsifiner" in data:
            data["sparsifiner"] = SparsifinerSettings.from_dict(data["sparsifiner"] or {})
        return cls(**data)


def _check_keys(cls, data: dict, prefix: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SparsifinerError(f"unknown training setting {prefix}{unknown[0]}: "
                               f"valid keys are {', '.join(sorted(prefix + n for n in names))}")


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise SparsifinerError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
