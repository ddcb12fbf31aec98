"""Conv geometry for least-squares refits: a Conv as a matrix product over im2col patches.

A Conv with weight W [out, in / group, kh, kw] computes, at output position (y, x) of image n,
out[n, :, y, x] = W_mat @ patch(n, y, x) + b, where patch is the input window [in / group, kh, kw]
flattened in W's order (channel, then kernel row, then kernel column). Refits sample output positions,
gather their patches, and solve for W_mat (and b) by least squares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError

__all__ = ["ConvGeometry", "conv_geometry", "patches", "sample_positions"]


@dataclass(frozen=True)
class ConvGeometry:
    """A 2-D Conv's kernel, strides, dilations, pads (top, left, bottom, right) and groups."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]
    group: int

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        """Output height and width for an input HEIGHT x WIDTH (ONNX Conv, floor division)."""
        sizes = []
        for axis, size in enumerate((height, width)):
            # Effective kernel extent with dilation; pads[axis] / pads[axis + 2]: begin / end of this axis.
            extent = self.dilations[axis] * (self.kernel[axis] - 1) + 1
            padded = size + self.pads[axis] + self.pads[axis + 2]
            sizes.append((padded - extent) // self.strides[axis] + 1)
        return sizes[0], sizes[1]


def conv_geometry(node: gs.Node, weight_shape: tuple[int, ...]) -> ConvGeometry:
    """NODE's geometry; raises UnsupportedModelError for what the refit does not handle (non-2-D, auto_pad)."""
    if len(weight_shape) != 4:
        raise UnsupportedModelError(f"{node.name}: a {len(weight_shape) - 2}-D Conv (only 2-D is refitted)")
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise UnsupportedModelError(f"{node.name}: auto_pad {node.attrs['auto_pad']} (explicit pads only)")
    kernel = tuple(int(k) for k in weight_shape[2:])  # W [out, in / group, kh, kw]: axes 2, 3 are the kernel
    strides = tuple(int(s) for s in node.attrs.get("strides", (1, 1)))
    dilations = tuple(int(d) for d in node.attrs.get("dilations", (1, 1)))
    pads = tuple(int(p) for p in node.attrs.get("pads", (0, 0, 0, 0)))
    return ConvGeometry(kernel, strides, dilations, pads, int(node.attrs.get("group", 1)))


def sample_positions(out_h: int, out_w: int, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to COUNT distinct output positions (rows, columns) of an OUT_H x OUT_W map, drawn from RNG (all of
    them when there are no more than COUNT), in raster order."""
    total = out_h * out_w
    flat = np.arange(total) if total <= count else np.sort(rng.choice(total, size=count, replace=False))
    return flat // out_w, flat % out_w  # raster index -> (row, column)


def patches(image: np.ndarray, geometry: ConvGeometry, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The input windows of output positions (ROWS, COLS) of one image [in, H, W]: [positions, in, kh, kw]."""
    top, left, bottom, right = geometry.pads
    padded = np.pad(image, ((0, 0), (top, bottom), (left, right)))  # zero padding, as Conv pads
    kh, kw = geometry.kernel
    (sy, sx), (dy, dx) = geometry.strides, geometry.dilations
    out = np.empty((len(rows), image.shape[0], kh, kw), dtype=image.dtype)
    for ky in range(kh):
        for kx in range(kw):
            # Output (y, x) reads padded input (y * stride + ky * dilation, x * stride + kx * dilation).
            out[:, :, ky, kx] = padded[:, rows * sy + ky * dy, cols * sx + kx * dx].T
    return out
