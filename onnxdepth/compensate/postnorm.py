"""Least-squares compensation for post-norm encoders (BERT): refit the surviving layers after the damage.

In a post-norm layer nothing linear sits between a removed sub-block and the next LayerNormalization
(`LN(x + 0)`), so there is no writer to fold a map into as in the pre-norm stream (`residual`). Instead
every surviving site from the first pruned layer on is refitted, in stream order, on the pruned model as
it stands (each fit sees the ones before it), to reproduce the unpruned model there:

- a consumer (Q/K/V, the MLP's up projection) reads the pruned input x and should give the unpruned
  output y: W', b' = argmin |x W + b - y|^2;
- a writer (attention output, MLP down projection) should make the pre-norm sum r + x W + b equal the
  unpruned one S, r being the residual it is added to in the pruned model: the target is S - r;
- a LayerNormalization's per-channel scale and bias are refitted to the unpruned norm output on the
  standardised pruned input (its own per-token standardisation, which no fold can change).

All fits are ridge least squares that shrink towards the current weights (not zero), so what the
calibration tokens do not excite keeps its trained value; the new weights replace the old in place (no
node or parameter added; shared initializers are never edited). A fit that does not lower its own error
on held-out windows is not applied, and the record says so.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from .fold import affine_of, set_affine, set_norm_affine
from .lstsq import NormalEquations, ridge_solve_toward, squared_error
from .postnorm_sites import NORM, WRITER, LiveSite, Site, live_site
from .residual import BATCH_SEQUENCES, run_outputs

__all__ = ["first_pruned_layer", "fit_postnorm"]

logger = logging.getLogger(__name__)

#: Ridge strengths tried per site (relative to the mean diagonal of X^T X, as in `lstsq`); the one with
#: the lowest held-out error is kept. Calibration windows are few next to a 1,536-wide input, and a
#: strong pull towards the trained weights often generalises better than the closest fit.
RIDGES = (1e-6, 1e-3, 1e-2, 1e-1, 1.0, 10.0)

#: Relative held-out error below which a site's input is taken as unchanged by pruning (nothing to fit).
UNCHANGED = 1e-10


def first_pruned_layer(pruned: list[str]) -> int:
    """The lowest layer index among PRUNED unit ids (layerN.kind); 0 if any unit is outside the layers."""
    layers = []
    for unit in pruned:
        prefix = unit.split(".")[0]
        if not (prefix.startswith("layer") and prefix[5:].isdigit()):
            return 0
        layers.append(int(prefix[5:]))
    return min(layers, default=0)


def _rows(batches: list[np.ndarray]) -> list[np.ndarray]:
    """Each batch flattened to [tokens, width] float64 rows."""
    return [b.reshape(-1, b.shape[-1]).astype(np.float64) for b in batches]


def _with_ones(x: np.ndarray, bias: bool) -> np.ndarray:
    """X [rows, in] with a column of ones appended (the bias row of the fitted [in + 1, out] matrix)."""
    return np.hstack([x, np.ones((len(x), 1))]) if bias else x


def _fit_transform(live: LiveSite, xs: list, targets: list) -> tuple[np.ndarray, list[np.ndarray], bool]:
    """(prior, one fit per RIDGES) [in (+1), out] matrices of a transform site, and whether it has a bias row;
    XS, TARGETS: rows."""
    weight, bias = affine_of(live.node, live.output)
    prior = weight if bias is None else np.vstack([weight, bias[None, :]])
    equations = NormalEquations()
    for x, y in zip(xs, targets):
        equations.add(_with_ones(x, bias is not None), y)
    fits = [ridge_solve_toward(equations.gram, equations.cross, prior, ridge) for ridge in RIDGES]
    return prior, fits, bias is not None


def _apply_transform(live: LiveSite, theta: np.ndarray, bias: bool) -> None:
    """Write the fitted [in (+1), out] matrix into the site's node (weight rows, then the bias row)."""
    set_affine(live.node, live.output, theta[:-1] if bias else theta, theta[-1] if bias else None)


def _standardised(x: np.ndarray, epsilon: float) -> np.ndarray:
    """LayerNormalization over the last axis without its affine part: (x - mean) / sqrt(var + eps), per row."""
    centred = x - x.mean(axis=-1, keepdims=True)
    return centred / np.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + epsilon)


def _norm_rows(live: LiveSite, xs: list) -> list[np.ndarray]:
    axis = live.node.attrs.get("axis", -1)
    if axis not in (-1, xs[0].ndim - 1):
        raise ValueError(f"{live.node.name}: LayerNormalization over axis {axis}, not the last")
    return [_standardised(x, float(live.node.attrs.get("epsilon", 1e-5))) for x in xs]


def _fit_norm(live: LiveSite, zs: list, targets: list) -> tuple[np.ndarray, list[np.ndarray]]:
    """(prior, one fit per RIDGES) [2, channels]: per channel c, scale and bias minimising |g z_c + b - y_c|^2,
    shrunk towards the current (g, b) with a relative ridge (each channel is its own 2 x 2 system)."""
    from ..graph.consts import const_value

    width = zs[0].shape[-1]
    scale = np.broadcast_to(const_value(live.node.inputs[1]), (width,)).astype(np.float64)
    shift = const_value(live.node.inputs[2]) if len(live.node.inputs) > 2 else None
    shift = np.zeros(width) if shift is None else np.broadcast_to(shift, (width,)).astype(np.float64)
    szz = sum((z * z).sum(axis=0) for z in zs)  # per-channel sums over tokens
    sz, n = sum(z.sum(axis=0) for z in zs), float(sum(len(z) for z in zs))
    szy = sum((z * y).sum(axis=0) for z, y in zip(zs, targets))
    sy = sum(y.sum(axis=0) for y in targets)
    fits = []
    for ridge in RIDGES:
        lam = ridge * (szz + n) / 2  # relative to the mean diagonal of each channel's 2 x 2 Gram matrix
        # [[szz + lam, sz], [sz, n + lam]] [g, b] = [szy + lam g0, sy + lam b0], per channel by Cramer's rule.
        a, d, r1, r2 = szz + lam, n + lam, szy + lam * scale, sy + lam * shift
        det = a * d - sz * sz
        fits.append(np.stack([(r1 * d - sz * r2) / det, (a * r2 - sz * r1) / det]))
    return np.stack([scale, shift]), fits


def _error(predict, theta, xs, targets, offsets) -> float:
    """Relative held-out squared error of the site's output (a writer's: of its pre-norm sum) with THETA.
    OFFSETS: what is added to the prediction (a writer's residual), else zeros."""
    error = total = 0.0
    for x, y, r in zip(xs, targets, offsets):
        error += squared_error(r + predict(x, theta), r + y)
        total += squared_error(r + y, np.zeros_like(y))
    return error / max(total, 1e-30)


def _fit_site(live: LiveSite, calib: dict, held: dict, target: list, held_target: list) -> dict:
    """Fit one live site on its calibration rows, check it on the held-out ones, apply it if it helps."""
    site = live.site
    record = {"site": site.kind, "layer": site.layer, "node": site.node, "folded": False}
    xs, xs_h = _rows(calib[live.input]), _rows(held[live.input])
    ys, ys_h = _rows(target), _rows(held_target)
    zeros = [np.zeros_like(y) for y in ys_h]
    if site.kind == WRITER:
        rs, rs_h = _rows(calib[live.residual]), _rows(held[live.residual])
        ys, ys_h = [y - r for y, r in zip(ys, rs)], [y - r for y, r in zip(ys_h, rs_h)]
        zeros = rs_h  # the error is the pre-norm sum's: residual + output
    if site.kind == NORM:
        xs, xs_h = _norm_rows(live, xs), _norm_rows(live, xs_h)
        prior, fits = _fit_norm(live, xs, ys)
        predict = lambda z, t: z * t[0] + t[1]  # noqa: E731
    else:
        if affine_of(live.node, live.output)[0].shape[1] != ys[0].shape[-1]:
            record["reason"] = "its output was width-pruned"
            return record
        prior, fits, bias = _fit_transform(live, xs, ys)
        predict = lambda x, t: _with_ones(x, len(t) > x.shape[-1]) @ t  # noqa: E731
    before = _error(predict, prior, xs_h, ys_h, zeros)
    errors = [_error(predict, theta, xs_h, ys_h, zeros) for theta in fits]
    best = int(np.argmin(errors))  # the ridge whose fit does best on the held-out windows
    after, theta = errors[best], fits[best]
    record["held_out_error"] = {"before": round(before, 6), "after": round(after, 6)}
    record["ridge"] = RIDGES[best]
    if before < UNCHANGED:
        record["reason"] = "its input is unchanged by pruning"
    elif after >= before:
        record["reason"] = "the fit does not lower the held-out error"
    elif site.kind == NORM:
        set_norm_affine(live.node, theta[0], theta[1])
        record["folded"] = True
    else:
        _apply_transform(live, theta, bias)
        record["folded"] = True
    return record


def fit_postnorm(model: onnx.ModelProto, session, sites: list[Site], tokens: np.ndarray,
                 held_out: np.ndarray) -> list[dict]:
    """Refit SITES (`postnorm_sites` of the unpruned MODEL) of the pruned SESSION, group by group in stream
    order, from the first pruned layer on. TOKENS / HELD_OUT: calibration and held-out windows. Returns one
    record per site considered (node, held-out error before / after, whether applied, why not)."""
    if not session.pruned:
        return []
    first = first_pruned_layer(session.pruned)
    sites = [s for s in sites if s.layer >= first]
    every = np.concatenate([tokens, held_out])
    split = -(-len(tokens) // BATCH_SEQUENCES)  # batches of calibration windows come first
    unpruned = run_outputs(model, sorted({s.target for s in sites}), every)
    records = []
    for group in sorted({s.group for s in sites}):
        members = [s for s in sites if s.group == group]
        lives = [live_site(session.graph, s) for s in members]
        for site, live in zip(members, lives):
            if isinstance(live, str):
                records.append({"site": site.kind, "layer": site.layer, "node": site.node, "folded": False,
                                "reason": live})
        lives = [live for live in lives if not isinstance(live, str)]
        if not lives:
            continue
        names = sorted({n for live in lives for n in (live.input, live.residual) if n is not None})
        values = run_outputs(session.to_model(model, keep=set(names)), names, every)
        calib = {name: v[:split] for name, v in values.items()}
        held = {name: v[split:] for name, v in values.items()}
        for live in lives:
            target = unpruned[live.site.target]
            record = _fit_site(live, calib, held, target[:split], target[split:])
            records.append(record)
            logger.info("post-norm fit %s (%s): %s", live.site.node, live.site.kind, record.get("held_out_error"))
        session.invalidate()
    return records
