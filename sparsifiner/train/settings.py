"""Training settings: one frozen dataclass for the run, one per phase inside it.

``TrainSettings`` holds everything that changes the trained weights: model, data,
global batch, seed, precision, the Sparsifiner settings (keep rate, thresholds), the
DeiT training pipeline (``AugmentSettings``: timm's image transform and Mixup/CutMix;
``EmaSettings``: model EMA), and a ``PhaseSettings`` for each of the three phases
(teacher, phase1, phase2), which also says whether that phase mixes its batches and
keeps an EMA. Only the CLI
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
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos", "random")
ERASE_MODES = ("const", "rand", "pixel")
MIXUP_MODES = ("batch", "pair", "elem")


@dataclass(frozen=True)
class PhaseSettings:
    """Optimiser, schedule and loss of one phase (fields a phase does not use are ignored).

    Schedule (all phases): AdamW; the learning rate rises linearly from warmup_lr to
        lr over warmup_epochs, then follows a cosine down to min_lr at the last step.
        Biases and norm weights (1-D parameters) get no weight decay.
    teacher: cross-entropy with label_smoothing (soft-target cross-entropy on the
        mixed, smoothed targets when the phase mixes its batches).
    phase1 (predictor only, dense attention): attention distillation of the
        predictor's scores S against the dense attention probabilities of the non-CLS
        rows, averaged over blocks. attn_loss "mse" (the paper) or "kl" (the code's
        variant: KL(dense || softmax(S)) per row). attn_reduction "sum" (the authors'
        code: summed over images, heads, rows and keys of the global batch; the sum is
        kept exact under gradient accumulation and data parallel) or "mean" (over all
        elements; batch-size independent). reg "l2": AdamW weight decay (the paper);
        "l1": W_up gets no weight decay but the penalty l1_weight * sum|W_up| (all
        blocks), the Table 1 ablation.
    phase2 (backbone, sparse attention): ce_weight * CE(labels, label_smoothing) +
        kl_weight * KL(teacher || student logits) (batch mean, DynamicViT form) +
        token_weight * MSE(student, teacher final patch tokens after the last norm).
        With mixup the CE is soft-target cross-entropy on the mixed, smoothed targets
        and the teacher sees the same mixed batch as the student (the authors' loss).
    mixup: mix each training batch with Mixup/CutMix (``TrainSettings.augmentation``),
        label_smoothing folded into the mixed targets. In phase 1 only the images are
        mixed (its loss has no labels), as in the authors' code.
    ema: keep an exponential moving average of the weights (``TrainSettings.ema``),
        saved as ``<phase>.ema.safetensors`` beside the phase's raw weights. Not in
        phase 1 (see ``TrainSettings``).
    grad_clip: clip the global gradient norm (null: no clipping, the authors' default).
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
    mixup: bool = False
    ema: bool = False

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
        if self.label_smoothing >= 1:
            raise SparsifinerError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _check_bools(self, ("mixup", "ema"))
        _check_choice("reg", self.reg, REGULARISERS)
        _check_choice("attn_loss", self.attn_loss, ATTN_LOSSES)
        _check_choice("attn_reduction", self.attn_reduction, REDUCTIONS)


@dataclass(frozen=True)
class AugmentSettings:
    """The training batches' randomness beyond the crop: timm's image transform and Mixup/CutMix.

    Image transform (ImageFolder data only; the digits keep their own small affine
    warps): the arguments of ``timm.data.create_transform(is_training=True)`` on top of
    the model's data config: RandomResizedCrop and flip, then ``auto_augment`` (a timm
    policy string such as "rand-m9-mstd0.5-inc1"; null: none), ``color_jitter`` (timm
    leaves it out while a RandAugment policy is on), ``train_interpolation`` of the crop
    (null: the model's, bicubic for DeiT) and random erasing (``re_prob``, ``re_mode``,
    ``re_count``). The defaults are timm's, so a recipe that says nothing gets timm's
    default training transform.
    Mixing (phases with ``mixup: true``): ``timm.data.Mixup`` with ``mixup_alpha``,
    ``cutmix_alpha`` (0 turns one off), ``mixup_prob`` (share of batches mixed),
    ``mixup_switch_prob`` (share of mixed batches that use CutMix when both are on) and
    ``mixup_mode`` (one lambda per "batch", "pair" or "elem"). Defaults: DeiT's.
    """

    auto_augment: Optional[str] = None
    color_jitter: float = 0.4
    train_interpolation: Optional[str] = None
    re_prob: float = 0.0
    re_mode: str = "const"
    re_count: int = 1
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"

    def __post_init__(self):
        for name in ("color_jitter", "mixup_alpha", "cutmix_alpha"):
            _check_number(name, getattr(self, name))
        for name in ("re_prob", "mixup_prob", "mixup_switch_prob"):
            value = getattr(self, name)
            _check_number(name, value)
            if value > 1:
                raise SparsifinerError(f"{name} is a probability: it must be in [0, 1], got {value}")
        if not isinstance(self.re_count, int) or isinstance(self.re_count, bool) or self.re_count < 1:
            raise SparsifinerError(f"re_count must be a positive integer, got {self.re_count!r}")
        if self.train_interpolation is not None:
            _check_choice("train_interpolation", self.train_interpolation, INTERPOLATIONS)
        _check_choice("re_mode", self.re_mode, ERASE_MODES)
        _check_choice("mixup_mode", self.mixup_mode, MIXUP_MODES)
        if self.auto_augment is not None:
            from sparsifiner.train.augment import check_auto_augment

            check_auto_augment(self.auto_augment)

    @property
    def mixes(self) -> bool:
        """Whether Mixup or CutMix can happen at all (one of the alphas is positive)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def transform_kwargs(self) -> dict:
        """The keyword arguments of ``timm.data.create_transform`` beyond the model's data config."""
        kwargs = {"auto_augment": self.auto_augment, "color_jitter": self.color_jitter, "re_prob": self.re_prob,
                  "re_mode": self.re_mode, "re_count": self.re_count}
        if self.train_interpolation is not None:
            kwargs["interpolation"] = self.train_interpolation
        return kwargs


@dataclass(frozen=True)
class EmaSettings:
    """The model EMA of the phases with ``ema: true`` (``timm.utils.ModelEmaV3``).

    decay: per optimiser step, constant (the authors' timm ModelEma; no warm-up).
    evaluate: also evaluate the EMA weights after every epoch (``val_ema_*`` in the
        metrics log), as the authors' ``model_ema_eval``.
    """

    decay: float = 0.9999
    evaluate: bool = True

    def __post_init__(self):
        _check_number("ema.decay", self.decay)
        if not 0 < self.decay < 1:
            raise SparsifinerError(f"ema.decay must be in (0, 1), got {self.decay}")
        _check_bools(self, ("evaluate",))


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
        ImageFolder: timm's training transform as ``augmentation`` sets it; off: the
        resize and center crop of evaluation). Mixup is a phase setting.
    augmentation: the image transform and Mixup/CutMix (``AugmentSettings``).
    ema: the model EMA (``EmaSettings``) of the phases with ``ema: true``. Phase 1 keeps
        none: its backbone is frozen, so an EMA would only average the predictor, and at
        the authors' decay 0.9999 over phase 1's ~4,800 ImageNet steps that average still
        holds 0.9999^4800 = 62 % of the random initial predictor, while the basis pruning
        and phase 2 need the trained one. (The authors' single EMA spans both phases; its
        final weights are within 1 % of an EMA started at phase 2, which is ours.)
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
    augmentation: AugmentSettings = field(default_factory=AugmentSettings)
    ema: EmaSettings = field(default_factory=EmaSettings)
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
        _check_bools(self, ("pretrained", "augment"))
        if self.phase1.ema:
            raise SparsifinerError("phase1.ema is not supported: phase 1 trains only the predictor, whose EMA at a decay "
                                   "like 0.9999 would still be mostly its random start; set phase1.ema false")
        for name in PHASES:
            if self.phase(name).mixup and not self.augmentation.mixes:
                raise SparsifinerError(f"{name}.mixup is on but augmentation.mixup_alpha and cutmix_alpha are both 0: "
                                       "set one of them > 0 or turn the phase's mixup off")

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
        for name, section in SECTIONS.items():
            if name in data:
                sub = data[name] or {}
                if not isinstance(sub, dict):
                    raise SparsifinerError(f"recipe key {name!r} must be a mapping")
                _check_keys(section, sub, f"{name}.")
                data[name] = section(**sub)
        return cls(**data)


SECTIONS = {"augmentation": AugmentSettings, "ema": EmaSettings}


def _check_keys(cls, data: dict, prefix: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SparsifinerError(f"unknown training setting {prefix}{unknown[0]}: "
                               f"valid keys are {', '.join(sorted(prefix + n for n in names))}")


def _check_number(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise SparsifinerError(f"{name} must be a number >= 0, got {value!r}")


def _check_bools(obj, names: tuple) -> None:
    for name in names:
        if not isinstance(getattr(obj, name), bool):
            raise SparsifinerError(f"{name} must be true or false, got {getattr(obj, name)!r}")


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise SparsifinerError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
