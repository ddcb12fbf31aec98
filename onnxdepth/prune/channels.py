"""Channel choice for a width change (Eq. 3.10): which channel classes go, and what slicing them costs.

Pure functions over a ChannelAnalysis and a per-parameter importance; nothing here edits the graph.
"""

from __future__ import annotations

import numpy as np

from ..graph.channels import ChannelAnalysis
from ..graph.consts import const_value
from ..param_importance import ParamImportance

__all__ = ["choose_channels", "greedy_cover", "channel_scores", "channel_masks", "removed_params"]


def choose_channels(a: ChannelAnalysis, pool: np.ndarray, need: int, skip_nodes: set[int],
                    importance: ParamImportance) -> tuple[str | None, np.ndarray, float]:
    """Pick channel classes of POOL (one tensor's channel roots) covering exactly NEED positions.

    A class may occupy several positions of the tensor (a Concat of a tensor with its pooled
    copies, as in SPPF): removing it removes all of them. Lowest importance per position first.
    Returns (why not, or None; the chosen roots, sorted; their total importance).
    """
    pinned, blocked = a.pinned_roots(), a.blocked_roots()
    roots, counts = np.unique(pool, return_counts=True)
    multiplicity = dict(zip(roots.tolist(), counts.tolist()))
    candidates = [r for r in multiplicity if r not in pinned and r not in blocked]
    if sum(multiplicity[r] for r in candidates) < need:
        bad = next((pinned.get(r) or blocked.get(r) for r in multiplicity if r in pinned or r in blocked),
                   "coupling")
        prefix = "width change would alter " if bad.startswith("graph") else "unprovable coupling: "
        return prefix + bad, np.zeros(0, dtype=np.int64), 0.0
    scores = channel_scores(a, set(candidates), skip_nodes, importance)
    ranked = sorted(candidates, key=lambda r: (scores.get(r, 0.0) / multiplicity[r], r))
    # Positions left per tensor, so that no tensor is pruned down to zero channels.
    candidate_set = set(candidates)
    is_candidate = a.lookup(candidates)
    left: dict[str, int] = {}
    tensors_of: dict[int, list[tuple[str, int]]] = {}
    for name in a.axes:
        tensor_roots = a.tensor_roots(name)
        # Index the class-id table by this tensor's channel roots: is any of its channels a candidate?
        if not is_candidate[tensor_roots].any():
            continue
        left[name] = len(tensor_roots)
        for root, count in zip(*np.unique(tensor_roots, return_counts=True)):
            if int(root) in candidate_set:
                tensors_of.setdefault(int(root), []).append((name, int(count)))
    for order in (ranked, sorted(ranked, key=lambda r: -multiplicity[r])):
        chosen = greedy_cover(order, multiplicity, need, left, tensors_of)
        if chosen is not None:
            break
    if chosen is None:
        return ("unprovable coupling: channel copies cannot be split to the needed width",
                np.zeros(0, dtype=np.int64), 0.0)
    return None, np.array(sorted(chosen), dtype=np.int64), sum(scores.get(r, 0.0) for r in chosen)


def greedy_cover(order, multiplicity, need, left, tensors_of) -> list[int] | None:
    """Take roots in ORDER while they fit NEED positions and leave every tensor a channel; None if short."""
    left = dict(left)
    chosen, covered = [], 0
    for root in order:
        if covered + multiplicity[root] > need:
            continue
        if any(left[name] - count <= 0 for name, count in tensors_of.get(root, [])):
            continue
        for name, count in tensors_of.get(root, []):
            left[name] -= count
        chosen.append(root)
        covered += multiplicity[root]
        if covered == need:
            return chosen
    return None


def channel_scores(a: ChannelAnalysis, roots: set[int], skip_nodes: set[int], importance: ParamImportance
                   ) -> dict[int, float]:
    """Total importance of each channel class over every site it occurs in (the group sums of 3.10)."""
    scores: dict[int, float] = {}
    wanted = a.lookup(roots)
    for site in a.sites:
        if site.kind in ("split", "shape") or id(site.node) in skip_nodes:
            continue
        site_roots = a.site_roots(site)
        hit = wanted[site_roots]  # per position of the site's channel axis: is its class wanted?
        if not hit.any():
            continue
        value = const_value(site.node.inputs[site.input_index])
        imp = importance(site.node, site.input_index, value)
        # Sum over every axis except the channel axis of this site.
        per_channel = imp.sum(axis=tuple(ax for ax in range(imp.ndim) if ax != site.axis))
        for root, score in zip(site_roots[hit].tolist(), per_channel[hit].tolist()):
            scores[root] = scores.get(root, 0.0) + score
    return scores


def channel_masks(a: ChannelAnalysis, removed_roots: np.ndarray, skip_nodes: set[int]) -> dict:
    """Keep masks per (node, input index): for each site axis, True where the channel stays."""
    masks: dict = {}
    removed = a.lookup(removed_roots)
    for site in a.sites:
        if id(site.node) in skip_nodes:
            continue
        keep = ~removed[a.site_roots(site)]  # one entry per position of the site's channel axis
        if keep.all():
            continue
        key = (id(site.node), site.input_index)
        entry = masks.setdefault(key, {"node": site.node, "index": site.input_index, "axes": {}, "sites": []})
        entry["sites"].append((site, keep))
        if site.kind in ("weight_in", "weight_out", "param"):
            # Two sites on the same axis of one constant (a depthwise weight) keep only what both keep.
            prev = entry["axes"].get(site.axis)
            entry["axes"][site.axis] = keep if prev is None else (prev & keep)
    return masks


def removed_params(masks: dict) -> int:
    """Parameters that slicing MASKS removes (floating-point constants only)."""
    removed = 0
    for entry in masks.values():
        if not entry["axes"]:
            continue
        value = const_value(entry["node"].inputs[entry["index"]])
        if value is None or not np.issubdtype(value.dtype, np.floating):
            continue
        kept_shape = list(value.shape)
        for axis, keep in entry["axes"].items():
            kept_shape[axis] = int(keep.sum())  # the sliced axis keeps as many entries as KEEP's Trues
        removed += value.size - int(np.prod(kept_shape))
    return removed
