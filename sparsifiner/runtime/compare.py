"""Compare named outputs of two runners: error statistics and a pass/fail verdict.

Modelled on Polygraphy's comparator: it takes two ``{output_name: array}`` dicts and
knows nothing about the backends that produced them. Statistics are computed in
float64 on the candidate against the reference.

Pass criterion, per element (numpy.allclose): |cand - ref| <= atol + rtol * |ref|;
any NaN or inf in the candidate where the reference is finite fails. Relative error
is |cand - ref| / |ref| (0 where both are 0, inf where only ref is 0).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

QUANTILES = (50, 90, 99)
# Defaults by the dtype of the exported graph. fp32: export and runtime reorder fp32
# sums only. fp16: the graph stores weights and activations in half precision and is
# compared with the fp32 PyTorch model, so the error is fp16 rounding through all blocks.
DEFAULT_TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (2e-2, 2e-2)}


@dataclass(frozen=True)
class OutputComparison:
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    mean_abs: float
    quantiles: dict  # {"p50": .., "p90": .., "p99": .., "max": ..} of the absolute error
    mismatches: int  # elements outside atol + rtol * |ref|
    top1: Optional[float]  # share of rows with the same argmax (2-D outputs), else None
    passed: bool

    def to_dict(self) -> dict:
        data = asdict(self)
        data["shape"] = list(self.shape)
        return data


def compare_arrays(name: str, reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float
                   ) -> OutputComparison:
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"output {name}: shapes differ, reference {ref.shape} vs candidate {cand.shape}")
    diff = np.abs(cand - ref)
    finite = np.isfinite(cand) | ~np.isfinite(ref)
    diff = np.where(np.isfinite(diff), diff, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(ref))
    within = (diff <= atol + rtol * np.abs(ref)) & finite
    flat = diff.reshape(-1)
    with np.errstate(invalid="ignore"):  # inf (from NaN outputs) makes percentile warn
        quantiles = {f"p{q}": float(np.percentile(flat, q)) if flat.size else 0.0 for q in QUANTILES}
    quantiles["max"] = float(flat.max()) if flat.size else 0.0
    top1 = None
    if ref.ndim == 2 and ref.shape[1] > 1:
        top1 = float(np.mean(ref.argmax(axis=1) == cand.argmax(axis=1)))
    return OutputComparison(
        name=name, shape=tuple(ref.shape), max_abs=quantiles["max"],
        max_rel=float(rel.max()) if rel.size else 0.0, mean_abs=float(flat.mean()) if flat.size else 0.0,
        quantiles=quantiles, mismatches=int((~within).sum()), top1=top1, passed=bool(within.all()),
    )


def compare_outputs(reference: dict, candidate: dict, atol: float, rtol: float) -> list[OutputComparison]:
    """Compare every output the reference has; a missing candidate output is an error."""
    missing = [name for name in reference if name not in candidate]
    if missing:
        raise ValueError(f"candidate lacks outputs {missing}")
    return [compare_arrays(name, reference[name], candidate[name], atol, rtol) for name in reference]
