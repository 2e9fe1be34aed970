"""The epoch loop shared by the three phases: schedule, precision, accumulation, logging, checkpoints.

A phase is described by a ``PhaseSpec`` (what to train and how one micro-batch turns
into a loss); ``run_phase`` does the rest the same way for all of them: AdamW with a
per-step warm-up + cosine schedule (a pure function of the step, so the schedule's
state is one integer), autocast and a grad scaler on GPU, gradient accumulation
under DDP's no_sync, Mixup/CutMix of each micro-batch before the step sees it (the
targets become soft), a model EMA updated after every optimiser step, a tqdm bar with
loss, accuracy and throughput, a JSONL metrics record per ``log_every`` steps and per
epoch, evaluation (of the EMA too) and an atomic checkpoint after every epoch, and
resumption from the last complete epoch (EMA included).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from sparsifiner.errors import SparsifinerError
from sparsifiner.train.augment import build_ema
from sparsifiner.train.checkpoint import read_train_state, restore_train_state, save_train_state
from sparsifiner.train.distributed import DistInfo, all_reduce_sum, barrier, no_sync
from sparsifiner.train.settings import PhaseSettings, TrainSettings


@dataclass
class StepOutput:
    """One micro-batch: its loss, how it reduces over images ("mean" or "sum"), a weight penalty,
    and numbers for the log. Logged losses are per-batch means; a "sum" loss is logged per image."""

    loss: torch.Tensor
    kind: str = "mean"
    penalty: Optional[torch.Tensor] = None
    correct: Optional[float] = None
    parts: dict = field(default_factory=dict)


@dataclass
class PhaseSpec:
    name: str
    model: nn.Module                       # what the checkpoint holds
    forward: nn.Module                     # what runs (wrapped in DDP by the caller)
    param_groups: list                     # AdamW groups of the trainable parameters
    step: Callable[[nn.Module, torch.Tensor, torch.Tensor], StepOutput]  # targets: indices or soft [B, C]
    evaluate: Callable[[nn.Module], dict]  # metrics of spec.model or of its EMA copy
    finish: Callable[[dict], dict]         # save the phase's artifact (main process); returns a summary
    train_mode: bool = True                # phase 1 keeps the frozen backbone in eval mode
    eval_before: bool = False              # log an evaluation before the first epoch (as epoch 0)
    mixup: Optional[Callable] = None       # (images, labels) -> (mixed images, soft targets)
    save_ema: Optional[Callable[[nn.Module, dict], dict]] = None  # write the EMA artifact; returns summary keys


@dataclass
class RunContext:
    settings: TrainSettings
    output: Path
    info: DistInfo
    train_loader: object
    amp_dtype: Optional[torch.dtype] = None
    progress: bool = True
    resume: bool = False
    log: Optional["MetricsLog"] = None


class MetricsLog:
    """Appends JSON records to ``metrics.jsonl`` (main process only)."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def drop_after(self, phase: str, epoch: int) -> None:
        """Forget the records of ``phase`` past ``epoch`` (an interrupted epoch, before resuming)."""
        if not (self.enabled and self.path.exists()):
            return
        from sparsifiner.artifacts import atomic_write

        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and not (json.loads(line).get("phase") == phase and json.loads(line).get("epoch", 0) > epoch)]
        atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in keep)))


def lr_at(step: int, total: int, steps_per_epoch: int, ps: PhaseSettings) -> float:
    """Linear warm-up from warmup_lr to lr, then cosine to min_lr at the last step."""
    warm = int(round(ps.warmup_epochs * steps_per_epoch))
    if step < warm:
        return ps.warmup_lr + (ps.lr - ps.warmup_lr) * step / warm
    progress = (step - warm) / max(1, total - warm - 1)
    return ps.min_lr + 0.5 * (ps.lr - ps.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker wrapped it in a traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    prefix = "sparsifiner.errors.SparsifinerError:"
    return last[len(prefix):].strip() if last.startswith(prefix) else last


def _next_batch(iterator):
    try:
        return next(iterator)
    except SparsifinerError as exc:
        raise SparsifinerError(one_line(exc)) from None


def state_path(output: Path, phase: str) -> Path:
    return output / f"{phase}.state.safetensors"


def run_phase(spec: PhaseSpec, ctx: RunContext) -> dict:
    """Train one phase to the end (or resume it) and return its summary."""
    from tqdm import tqdm

    settings, info = ctx.settings, ctx.info
    ps = settings.phase(spec.name)
    accum = settings.accum_steps
    loader = ctx.train_loader
    steps_per_epoch = len(loader) // accum
    if steps_per_epoch == 0:
        raise SparsifinerError(f"the training set is smaller than one global batch of {settings.batch_size}: "
                               "lower --batch-size or use more images")
    total = ps.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(spec.param_groups, lr=ps.lr)
    ema = None
    if ps.ema:
        if spec.save_ema is None:
            raise SparsifinerError(f"{spec.name} keeps no EMA: set {spec.name}.ema false")
        ema = build_ema(spec.model, settings.ema)
    use_scaler = ctx.amp_dtype == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    start_epoch, step = 0, 0
    path = state_path(ctx.output, spec.name)
    if ctx.resume and path.exists():
        tensors, meta = read_train_state(path)
        if meta.get("phase") != spec.name:
            raise SparsifinerError(f"{path} belongs to {meta.get('phase')}, not {spec.name}")
        _check_same_settings(meta.get("settings", {}), settings.to_dict(), path)
        restore_train_state(tensors, meta, spec.model, optimizer, scaler if use_scaler else None, str(path),
                            ema=ema.module if ema is not None else None)
        start_epoch, step = int(meta["epoch"]), int(meta["step"])
        if ctx.log:
            ctx.log.drop_after(spec.name, start_epoch)
    elif ctx.log:
        ctx.log.drop_after(spec.name, -1)

    last_eval: dict = {}
    last_ema_eval: dict = {}
    if spec.eval_before and start_epoch == 0:
        last_eval = spec.evaluate(spec.model)
        if ctx.log:
            ctx.log.write({"phase": spec.name, "epoch": 0, "kind": "epoch", **_prefixed(last_eval, "val_")})

    world_images = settings.batch_size // accum  # images per micro-step over all processes
    for epoch in range(start_epoch, ps.epochs):
        from sparsifiner.data import set_loader_epoch

        set_loader_epoch(loader, epoch, settings.seed, info.rank)
        spec.model.train(spec.train_mode)
        sums = {"loss": 0.0, "correct": 0.0, "images": 0.0, "batches": 0.0}
        part_sums: dict = {}
        bar = tqdm(total=steps_per_epoch, desc=f"{spec.name} {epoch + 1}/{ps.epochs}", leave=False,
                   disable=not (ctx.progress and info.is_main), dynamic_ncols=True)
        iterator = iter(loader)
        t0 = time.perf_counter()
        for done in range(steps_per_epoch):
            lr = lr_at(step, total, steps_per_epoch, ps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for micro in range(accum):
                images, labels = _next_batch(iterator)
                images = images.to(info.device, non_blocking=True)
                labels = labels.to(info.device, non_blocking=True)
                if spec.mixup is not None:
                    images, labels = spec.mixup(images, labels)
                count = images.shape[0]
                with no_sync(spec.forward, micro < accum - 1):
                    with torch.autocast(info.device.type, dtype=ctx.amp_dtype or torch.float32,
                                        enabled=ctx.amp_dtype is not None):
                        out = spec.step(spec.forward, images, labels)
                        scale = info.world if out.kind == "sum" else 1.0 / accum
                        loss = out.loss * scale
                        if out.penalty is not None:
                            loss = loss + out.penalty / accum
                    scaler.scale(loss).backward()
                value = float(out.loss.detach())
                if not math.isfinite(value):
                    raise SparsifinerError(f"{spec.name}: the loss became {value} at step {step}: lower the learning "
                                           "rate or turn mixed precision off (--amp off)")
                if out.kind == "sum":  # log per image, so the numbers do not depend on the batch size
                    value /= count
                sums["loss"] += value
                sums["batches"] += 1
                sums["images"] += count
                if out.correct is not None:
                    sums["correct"] += out.correct
                for k, v in out.parts.items():
                    part_sums[k] = part_sums.get(k, 0.0) + v
            if ps.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], ps.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(spec.model)
            step += 1
            elapsed = time.perf_counter() - t0
            rate = world_images * accum * (done + 1) / elapsed if elapsed > 0 else 0.0
            bar.update(1)
            postfix = {"loss": f"{sums['loss'] / sums['batches']:.4g}", "img/s": f"{rate:.0f}", "lr": f"{lr:.2e}"}
            if out.correct is not None:
                postfix["acc"] = f"{100 * sums['correct'] / sums['images']:.1f}"
            bar.set_postfix(postfix, refresh=False)
            if step % settings.log_every == 0 and ctx.log:
                ctx.log.write({"phase": spec.name, "epoch": epoch + 1, "step": step, "kind": "step", "lr": lr,
                               "loss": value, **{k: v for k, v in out.parts.items()}})
        bar.close()
        train_time = time.perf_counter() - t0
        keys = ["loss", "correct", "images", "batches", *sorted(part_sums)]
        reduced = dict(zip(keys, all_reduce_sum([sums.get(k, part_sums.get(k, 0.0)) for k in keys], info)))
        record = {"phase": spec.name, "epoch": epoch + 1, "kind": "epoch", "step": step, "lr": lr,
                  "train_loss": reduced["loss"] / reduced["batches"],
                  "img_per_s": reduced["images"] / train_time if train_time > 0 else 0.0, "time_s": train_time}
        if out.correct is not None:
            record["train_top1"] = 100.0 * reduced["correct"] / reduced["images"]
        record.update({f"train_{k}": reduced[k] / reduced["batches"] for k in part_sums})
        last_eval = spec.evaluate(spec.model)
        record.update(_prefixed(last_eval, "val_"))
        if ema is not None and settings.ema.evaluate:
            last_ema_eval = spec.evaluate(ema.module)
            record.update(_prefixed(last_ema_eval, "val_ema_"))
        if ctx.log:
            ctx.log.write(record)
        if info.is_main:
            save_train_state(path, spec.model, optimizer,
                             {"phase": spec.name, "epoch": epoch + 1, "step": step, "epochs": ps.epochs,
                              "scheduler": {"kind": "warmup_cosine", "step": step, "total": total,
                                            "steps_per_epoch": steps_per_epoch},
                              "settings": settings.to_dict(), "metrics": record},
                             scaler if use_scaler else None, ema=ema.module if ema is not None else None)
        barrier(info)
    summary = {}
    if info.is_main:
        # the EMA file first: the raw artifact marks the phase complete (resume skips it)
        ema_summary = spec.save_ema(ema.module, last_ema_eval) if ema is not None and spec.save_ema else {}
        summary = spec.finish(last_eval)
        summary.update(ema_summary)
    barrier(info)
    return summary


def _prefixed(metrics: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}


def _check_same_settings(saved: dict, current: dict, path: Path, prefix: str = "") -> None:
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            _check_same_settings(a, b, path, f"{prefix}{key}.")
        elif a != b:
            raise SparsifinerError(f"cannot resume from {path}: setting {prefix}{key} was {a!r}, now {b!r}; "
                                   "use the same settings or start again with --overwrite")
