"""The two-phase recipe (plus the demo's teacher phase) wired onto the shared loop.

    teacher  dense ViT, cross-entropy (the demo has no pretrained weights offline);
    phase1   backbone frozen, attention dense, only the predictor learns to
             reproduce the dense attention; then the basis is pruned once (tau_basis);
    phase2   predictor frozen, sparse attention with coefficient pruning, the
             backbone learns from labels and from the frozen dense teacher.
Each phase writes ``<phase>.safetensors`` (+ ``.json`` with the settings and final
metrics) into the output folder, ``<phase>.ema.safetensors`` when it keeps a model
EMA, a resumable ``<phase>.state.safetensors`` after every epoch, and appends to
``metrics.jsonl``. A phase with ``mixup`` mixes every batch (timm's Mixup/CutMix)
before its loss sees it; in phase 2 the teacher gets the same mixed images. A phase
starts from ``--checkpoint`` when it is the first one run, else from the previous
phase's file in the output folder. Under torchrun the output folder must be shared
by all processes.
"""
from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from sparsifiner.artifacts import write_json
from sparsifiner.errors import SparsifinerError
from sparsifiner.model.io import save_dense
from sparsifiner.train.augment import build_mixup, classification_loss, count_correct, ema_path
from sparsifiner.train.distributed import DistInfo, distributed_context, wrap_ddp
from sparsifiner.train.evaluate import evaluate_model
from sparsifiner.train.loop import MetricsLog, PhaseSpec, RunContext, StepOutput, run_phase, state_path
from sparsifiner.model.source import dense_model
from sparsifiner.train.losses import FeaturesAndLogits, attention_distillation, l1_basis_penalty, phase2_loss
from sparsifiner.train.models import (build_dense, freeze, load_student, load_teacher,
                                      make_student, param_groups)
from sparsifiner.train.settings import PHASES, TrainSettings

PHASE_CHOICES = {"teacher": ("teacher",), "1": ("phase1",), "2": ("phase2",), "both": ("phase1", "phase2"),
                 "all": ("teacher", "phase1", "phase2")}


def artifact_path(output: Path, phase: str) -> Path:
    return Path(output) / f"{phase}.safetensors"


def resolve_phases(phase: str) -> tuple[str, ...]:
    if phase not in PHASE_CHOICES:
        raise SparsifinerError(f"--phase must be one of {', '.join(PHASE_CHOICES)}; got {phase!r}")
    return PHASE_CHOICES[phase]


def prepare_output(output: Path, phases: Sequence[str], resume: bool, overwrite: bool) -> None:
    """Create the output folder, prove it is writable, and refuse to clobber a run by accident."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise SparsifinerError(f"cannot write to the output folder {output} ({exc.strerror or exc}): "
                               "choose a writable --output") from None
    for phase in phases:
        for stale in output.glob(f".{phase}.*.tmp"):  # left by a kill in the middle of a checkpoint write
            stale.unlink()
        files = [artifact_path(output, phase), ema_path(artifact_path(output, phase)), state_path(output, phase)]
        files += [f.with_suffix(".json") for f in files]
        existing = [f for f in files if f.exists()]
        if existing and overwrite:
            for f in existing:
                f.unlink()
        elif existing and not resume:
            raise SparsifinerError(f"{existing[0]} exists: pass --resume to continue that run or --overwrite "
                                   "to start again")


def amp_dtype_for(settings: TrainSettings, device: torch.device) -> Optional[torch.dtype]:
    if device.type != "cuda" or settings.amp == "off":
        return None
    if settings.amp == "bf16" or (settings.amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_training(settings: TrainSettings, phase: str = "both", output: str | Path = "runs/sparsifiner", *,
                 resume: bool = False, overwrite: bool = False, progress: bool = True,
                 device: Optional[str] = None) -> dict:
    """Run the chosen phases ("teacher", "1", "2", "both", "all"); returns {phase: summary}."""
    phases = resolve_phases(phase)
    output = Path(output)
    if not settings.data:
        raise SparsifinerError("no training data: pass --data digits or an ImageFolder root with train/ and val/")
    with distributed_context(device) as info:
        _check_mixup_batches(settings, phases, info.world)
        if info.is_main:
            prepare_output(output, phases, resume, overwrite)
            write_json(output / "train_settings.json", settings.to_dict())
        from sparsifiner.train.distributed import barrier

        barrier(info)
        trainer = _Trainer(settings, output, info, progress, resume)
        summary = {}
        for i, name in enumerate(phases):
            summary[name] = trainer.run(name, first=i == 0)
        return summary


def _check_mixup_batches(settings: TrainSettings, phases: Sequence[str], world: int) -> None:
    """timm's Mixup pairs each image with the batch's mirror image: the micro-batches must be even."""
    micro, rest = divmod(settings.batch_size, world * settings.accum_steps)
    mixing = [name for name in phases if settings.phase(name).mixup]
    if mixing and not rest and micro % 2:
        raise SparsifinerError(f"{mixing[0]}.mixup needs an even number of images per process and accumulation step, "
                               f"but batch_size {settings.batch_size} / ({world} x {settings.accum_steps}) = {micro}: "
                               "change --batch-size or --accum-steps")


class _Trainer:
    """Builds each phase's models, data and loss, and hands them to the loop."""

    def __init__(self, settings: TrainSettings, output: Path, info: DistInfo, progress: bool, resume: bool):
        from sparsifiner.data import num_classes_of

        self.settings, self.output, self.info = settings, output, info
        self.progress, self.resume = progress, resume
        self.amp_dtype = amp_dtype_for(settings, info.device)
        self.num_classes = num_classes_of(settings.data)
        self.log = MetricsLog(output / "metrics.jsonl", info.is_main)
        self.datasets = None
        world = info.world * settings.accum_steps
        if settings.batch_size % world:
            raise SparsifinerError(f"batch_size {settings.batch_size} is not divisible by processes x accum_steps "
                                   f"({info.world} x {settings.accum_steps})")
        self.micro_batch = settings.batch_size // world

    def run(self, name: str, first: bool) -> dict:
        final = artifact_path(self.output, name)
        if self.resume and final.exists():
            info = json.loads(final.with_suffix(".json").read_text()) if final.with_suffix(".json").exists() else {}
            return {"phase": name, "path": str(final), "skipped": "already complete", **info.get("metrics", {})}
        seed_everything(self.settings.seed)
        spec = getattr(self, f"_spec_{name}")(first)
        ps = self.settings.phase(name)
        if ps.mixup:
            spec.mixup = build_mixup(self.settings.augmentation, self.num_classes, ps.label_smoothing)
        self._loaders(spec.model)
        ctx = RunContext(self.settings, self.output, self.info, self.train_loader, self.amp_dtype,
                         self.progress, self.resume, self.log)
        start = time.perf_counter()
        summary = run_phase(spec, ctx)
        summary["time_s"] = time.perf_counter() - start
        return summary

    # -- data ----------------------------------------------------------------------------------
    def _loaders(self, model) -> None:
        from sparsifiner.data import build_datasets, build_loader

        if self.datasets is None:
            s = self.settings
            self.datasets = build_datasets(s.data, model, augment=s.augment, seed=s.seed, limit=s.limit,
                                           transform=s.augmentation.transform_kwargs())
            train, val = self.datasets
            self.train_loader = build_loader(train, self.micro_batch, True, self.info.world, self.info.rank,
                                             s.seed, s.workers)
            self.val_loader = build_loader(val, s.eval_batch_size, False, self.info.world, self.info.rank,
                                           s.seed, s.workers)

    def _evaluate(self, model, **kwargs) -> dict:
        return evaluate_model(model, self.val_loader, self.info, amp_dtype=self.amp_dtype,
                              progress=self.progress, **kwargs)

    def _extra(self, phase: str, metrics: dict, **more) -> dict:
        return {"phase": phase, "train_settings": self.settings.to_dict(), "metrics": metrics, **more}

    def _ema_saver(self, phase: str, save):
        """save_ema of a PhaseSpec: ``save(model, path, extra)`` writes <phase>.ema.safetensors."""
        def save_ema(model, metrics: dict) -> dict:
            path = ema_path(artifact_path(self.output, phase))
            save(model, path, self._extra(phase, metrics, weights="ema", ema_decay=self.settings.ema.decay))
            return {"ema_path": str(path), **{f"ema_{k}": v for k, v in metrics.items()}}

        return save_ema

    # -- models --------------------------------------------------------------------------------
    def _teacher_source(self, first: bool):
        s = self.settings
        if first and s.checkpoint:
            return load_teacher(Path(s.checkpoint), s, self.num_classes)
        own = artifact_path(self.output, "teacher")
        if own.exists():
            return load_teacher(own, s, self.num_classes)
        if s.pretrained:  # keep the pretrained head: a teacher must already know the data's classes
            return build_dense(s, None, pretrained=True)
        raise SparsifinerError(f"phase 1 needs a dense teacher: pass --checkpoint, --pretrained, or run --phase "
                               f"teacher first (no {own})")

    def _check_classes(self, model, what: str) -> None:
        if model.num_classes != self.num_classes:
            raise SparsifinerError(f"the {what} has {model.num_classes} classes but the data has {self.num_classes}: "
                                   "fine-tune it on this data with --phase teacher")

    # -- phases --------------------------------------------------------------------------------
    def _spec_teacher(self, first: bool) -> PhaseSpec:
        s, ps = self.settings, self.settings.teacher
        if first and s.checkpoint:
            model = load_teacher(Path(s.checkpoint), s, self.num_classes)
        else:
            model = build_dense(s, self.num_classes, pretrained=s.pretrained)
        self._check_classes(model, "model")
        model = model.to(self.info.device)
        freeze(model)
        forward = wrap_ddp(model, self.info)

        def step(fwd, images, targets) -> StepOutput:
            logits = fwd(images).float()
            loss = classification_loss(logits, targets, ps.label_smoothing)
            return StepOutput(loss, "mean", correct=count_correct(logits, targets))

        def finish(metrics: dict) -> dict:
            path = save_dense(model, artifact_path(self.output, "teacher"), self._extra("teacher", metrics))
            return {"phase": "teacher", "path": str(path), **metrics}

        return PhaseSpec("teacher", model, forward, param_groups(list(model.named_parameters()), ps.weight_decay),
                         step, lambda m: self._evaluate(m, method_metrics=False), finish,
                         save_ema=self._ema_saver("teacher", save_dense))

    def _spec_phase1(self, first: bool) -> PhaseSpec:
        from sparsifiner.model.sparsify import collect_aux, prune_basis, set_mode, sparse_layers
        from sparsifiner.model.io import save_sparsifiner

        s, ps = self.settings, self.settings.phase1
        teacher = self._teacher_source(first)
        self._check_classes(teacher, "teacher")
        student = make_student(teacher, s.sparsifiner, mode="dense").to(self.info.device)
        del teacher
        predictors = [(f"blocks.{i}.attn.predictor.{n}", p) for i, layer in enumerate(sparse_layers(student))
                      for n, p in layer.predictor.named_parameters()]
        freeze(student, [p for _, p in predictors])
        w_up = frozenset(id(layer.predictor.w_up) for layer in sparse_layers(student)
                         if layer.predictor.w_up is not None)
        groups = param_groups(predictors, ps.weight_decay, w_up if ps.reg == "l1" else frozenset())
        forward = wrap_ddp(student, self.info)

        def step(fwd, images, targets) -> StepOutput:  # no labels: mixing only changes the images
            with collect_aux(student) as records:
                fwd(images)
            loss = attention_distillation(records, ps.attn_loss, ps.attn_reduction)
            penalty = None
            if ps.reg == "l1":
                current = [layer.predictor.basis for layer in sparse_layers(student)]
                penalty = ps.l1_weight * l1_basis_penalty(current)
            return StepOutput(loss, ps.attn_reduction, penalty)

        def finish(metrics: dict) -> dict:
            sparsity = prune_basis(student)
            set_mode(student, "sparse")
            path = save_sparsifiner(student, artifact_path(self.output, "phase1"),
                                    self._extra("phase1", metrics, basis_sparsity=sparsity))
            return {"phase": "phase1", "path": str(path), "basis_sparsity": sparsity, **metrics}

        return PhaseSpec("phase1", student, forward, groups, step,
                         lambda m: self._evaluate(m, attn_loss=ps.attn_loss), finish,
                         train_mode=False, eval_before=True)

    def _spec_phase2(self, first: bool) -> PhaseSpec:
        from sparsifiner.model.io import save_sparsifiner
        from sparsifiner.model.sparsify import arch_of, predictor_parameters, prune_basis

        s, ps = self.settings, self.settings.phase2
        source = Path(s.checkpoint) if first and s.checkpoint else artifact_path(self.output, "phase1")
        if not source.exists():
            raise SparsifinerError(f"phase 2 starts from a phase-1 checkpoint: pass --checkpoint or run --phase 1 "
                                   f"first (no {source})")
        student = load_student(source, s, mode="sparse")
        self._check_classes(student, "phase-1 model")
        prune_basis(student)  # with this run's tau_basis (a no-op change when it is phase 1's)
        teacher = dense_model(arch_of(student), student.state_dict(), str(source)).to(self.info.device)
        teacher.eval()
        freeze(teacher, [])
        student = student.to(self.info.device)
        predictor = {id(p) for p in predictor_parameters(student)}
        trainable = [(n, p) for n, p in student.named_parameters() if id(p) not in predictor]
        freeze(student, [p for _, p in trainable])
        forward = wrap_ddp(FeaturesAndLogits(student), self.info)
        prefix = student.num_prefix_tokens

        def step(fwd, images, targets) -> StepOutput:
            with torch.no_grad():  # the teacher sees the student's (mixed) batch
                t_tokens = teacher.forward_features(images)
                t_logits = teacher.forward_head(t_tokens)
            tokens, logits = fwd(images)
            loss, parts = phase2_loss(logits, tokens, t_logits, t_tokens, targets, ps, prefix)
            return StepOutput(loss, "mean", correct=count_correct(logits, targets), parts=parts)

        def finish(metrics: dict) -> dict:
            path = save_sparsifiner(student, artifact_path(self.output, "phase2"), self._extra("phase2", metrics))
            return {"phase": "phase2", "path": str(path), **metrics}

        return PhaseSpec("phase2", student, forward, param_groups(trainable, ps.weight_decay), step,
                         lambda m: self._evaluate(m), finish, eval_before=True,
                         save_ema=self._ema_saver("phase2", save_sparsifiner))


__all__ = ["PHASES", "PHASE_CHOICES", "artifact_path", "run_training"]
