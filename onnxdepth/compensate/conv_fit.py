"""Refit one Conv's kernel (and bias) by ridge least squares over im2col patches, group by group.

Per group g, out[:, g] = patches[:, g] @ T[g] with T[g] [in_g * kh * kw (+ 1 for the bias), out_g]: the
normal equations are summed in float64 over calibration images (memory O(groups x d^2)), solved with
`lstsq.ridge_solve`, checked on held-out images, and folded as fresh constants (a shared initializer is
never edited).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..graph.consts import const_value, set_const_input
from .im2col import ConvGeometry, patches
from . import lstsq

__all__ = ["ConvFit", "Sample", "conv_features", "conv_matrix", "fold_conv", "relative_error"]


@dataclass
class Sample:
    """One image's sampled output positions and the unpruned conv output there: TARGET [positions, out];
    SHAPE: the unpruned output map's height and width."""

    rows: np.ndarray
    cols: np.ndarray
    target: np.ndarray
    shape: tuple[int, int]


def conv_features(image: np.ndarray, geometry: ConvGeometry, sample: Sample, bias: bool) -> np.ndarray:
    """[positions, groups, d] float64: each group's flattened patch (channel, kernel row, kernel column), then
    a 1 for the bias when BIAS."""
    window = patches(image, geometry, sample.rows, sample.cols)  # [positions, in, kh, kw]
    per_group = window.reshape(len(window), geometry.group, -1).astype(np.float64)  # in = groups x in_g
    if bias:
        ones = np.ones((len(window), geometry.group, 1))
        per_group = np.concatenate([per_group, ones], axis=2)
    return per_group


def conv_matrix(weight: np.ndarray, bias: np.ndarray | None, group: int) -> np.ndarray:
    """T [groups, d, out_g] of a Conv: W [out, in_g, kh, kw] (+ b [out]) as the map from features to outputs."""
    out = weight.shape[0]
    # Axis 0 of W holds the groups' outputs back to back: [groups, out_g, in_g * kh * kw].
    matrix = weight.reshape(group, out // group, -1).astype(np.float64)
    if bias is not None:
        matrix = np.concatenate([matrix, bias.reshape(group, out // group, 1).astype(np.float64)], axis=2)
    return matrix.transpose(0, 2, 1)  # [groups, d, out_g]


def _predict(features: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Outputs [positions, out] of FEATURES [positions, groups, d] through MATRIX [groups, d, out_g]."""
    per_group = features.transpose(1, 0, 2) @ matrix  # [groups, positions, out_g]
    return per_group.transpose(1, 0, 2).reshape(len(features), -1)  # groups' outputs back to back, as the Conv's output channels


class ConvFit:
    """Running normal equations of one Conv's refit: X^T X [groups, d, d] and X^T Y [groups, d, out_g]."""

    def __init__(self, geometry: ConvGeometry, bias: bool) -> None:
        self.geometry, self.bias = geometry, bias
        self.gram: np.ndarray | None = None
        self.cross: np.ndarray | None = None
        self.rows = 0

    def add(self, image: np.ndarray, sample: Sample) -> None:
        """One image [in, H, W] of the pruned model's conv input, and its sampled unpruned outputs."""
        x = conv_features(image, self.geometry, sample, self.bias)
        group = self.geometry.group
        # Target channels split by group: [positions, groups, out_g].
        y = sample.target.reshape(len(x), group, -1).astype(np.float64)
        per_group = x.transpose(1, 2, 0)  # [groups, d, positions]: batched matrix products, one per group
        gram, cross = per_group @ x.transpose(1, 0, 2), per_group @ y.transpose(1, 0, 2)
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = cross if self.cross is None else self.cross + cross
        self.rows += len(x)

    def solve(self, ridge: float | None = None) -> np.ndarray:
        """T [groups, d, out_g], each group's ridge solution (RIDGE: lstsq.RIDGE, read when called)."""
        ridge = lstsq.RIDGE if ridge is None else ridge
        return np.stack([lstsq.ridge_solve(g, c, ridge) for g, c in zip(self.gram, self.cross)])


def relative_error(images: list[np.ndarray], samples: list[Sample], geometry: ConvGeometry, bias: bool,
                   matrices: list[np.ndarray]) -> list[float]:
    """|prediction - target|^2 / |target|^2 over held-out IMAGES, for each of MATRICES (float64)."""
    errors = np.zeros(len(matrices))
    total = 0.0
    for image, sample in zip(images, samples):
        x = conv_features(image, geometry, sample, bias)
        target = sample.target.astype(np.float64)
        total += float(np.vdot(target, target))
        for k, matrix in enumerate(matrices):
            diff = _predict(x, matrix) - target
            errors[k] += float(np.vdot(diff, diff))
    return [float(e) / max(total, 1e-30) for e in errors]


def fold_conv(node: gs.Node, matrix: np.ndarray) -> None:
    """Give Conv NODE the kernel (and bias) of MATRIX [groups, d, out_g], as fresh constants."""
    weight = const_value(node.inputs[1])
    group, out_g = matrix.shape[0], matrix.shape[2]
    per_group = matrix.transpose(0, 2, 1)  # [groups, out_g, d]
    kernel_size = int(np.prod(weight.shape[1:]))  # in_g * kh * kw: the features before the bias
    new_weight = per_group[:, :, :kernel_size].reshape(weight.shape)
    set_const_input(node, 1, new_weight.astype(weight.dtype))
    if per_group.shape[2] > kernel_size:
        bias = const_value(node.inputs[2])
        set_const_input(node, 2, per_group[:, :, kernel_size].reshape(group * out_g).astype(bias.dtype))
