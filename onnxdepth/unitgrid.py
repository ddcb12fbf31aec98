"""Which units of which transformer layer a plan pruned: the grid of the thesis's Figure 4.3.

Rows are unit kinds (attention and the MLP's gate / up / down projections), columns are layers. Unit
ids in a plan are ``layer{N}.{kind}``: ``attention``, ``mlp_gate`` / ``mlp_up`` / ``mlp_down`` (fine),
``mlp`` (sublayer: all three projections) or ``block`` (the whole layer); composite steps also list
their fine ``members``. Plans of CNNs name graph nodes instead and have no grid.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["KINDS", "UnitGrid", "unit_grid", "plan_layer_count"]

KINDS = ("attention", "gate", "up", "down")

# Unit kind in an id -> the grid rows it covers.
_KIND_CELLS = {
    "attention": ("attention",), "attn": ("attention",), "self_attn": ("attention",),
    "mlp_gate": ("gate",), "gate": ("gate",),
    "mlp_up": ("up",), "up": ("up",),
    "mlp_down": ("down",), "down": ("down",),
    "mlp": ("gate", "up", "down"),
    "block": KINDS,
}
_UNIT_ID = re.compile(r"^layer(\d+)\.([A-Za-z_]+)$")


@dataclass
class UnitGrid:
    layers: int
    kinds: tuple[str, ...] = KINDS
    order: dict[tuple[int, str], int] = field(default_factory=dict)  # (layer, kind) -> 1-based step

    def pruned(self, layer: int, kind: str) -> bool:
        return (layer, kind) in self.order

    def layer_gone(self, layer: int) -> bool:
        """Every unit of the layer is pruned: it is an identity, as if deleted by coarse block pruning."""
        return all(self.pruned(layer, kind) for kind in self.kinds)

    def to_json(self) -> dict:
        return {"layers": self.layers, "kinds": list(self.kinds),
                "pruned": [{"layer": layer, "kind": kind, "step": step}
                           for (layer, kind), step in sorted(self.order.items())]}


def _cells(unit_id: str) -> tuple[int, tuple[str, ...]] | None:
    match = _UNIT_ID.match(unit_id)
    if match is None or match.group(2) not in _KIND_CELLS:
        return None
    return int(match.group(1)), _KIND_CELLS[match.group(2)]


def unit_grid(plan: dict, layers: int | None = None) -> UnitGrid | None:
    """The grid of PLAN, or None when its steps are not transformer units (a CNN plan).

    LAYERS overrides the plan's layer count; without either, the grid ends at the last pruned layer.
    """
    steps = plan.get("steps") or []
    order: dict[tuple[int, str], int] = {}
    for number, step in enumerate(steps, start=1):
        unit_ids = step.get("members") or [step.get("unit", "")]
        for unit_id in unit_ids:
            cells = _cells(str(unit_id))
            if cells is None:
                return None
            layer, kinds = cells
            for kind in kinds:
                order.setdefault((layer, kind), number)
    count = layers or plan.get("layers") or 0
    if not order and not count:
        return None
    last = max((layer for layer, _ in order), default=-1)
    return UnitGrid(max(int(count), last + 1), KINDS, order)


def plan_layer_count(plan: dict, model_path: str | Path | None = None) -> int | None:
    """Layer count of the plan's model: the plan's own ``layers``, else ``num_hidden_layers`` of a
    Hugging Face config.json beside the model or its source."""
    if plan.get("layers"):
        return int(plan["layers"])
    for path in (model_path, plan.get("source")):
        if not path:
            continue
        config = Path(path).resolve().parent / "config.json"
        try:
            layers = json.loads(config.read_text()).get("num_hidden_layers")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(layers, int) and layers > 0:
            return layers
    return None
