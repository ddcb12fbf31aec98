"""The fit sites of a post-norm transformer encoder (BERT), read off the graph: what `postnorm` refits.

A post-norm layer computes `h = LN1(x + O(attn(Q x, K x, V x)))` and `out = LN2(h + down(act(up h)))`:
every residual Add feeds a LayerNormalization and nothing else (in a pre-norm stream it also feeds the
next Add). Pruning an attention block or an MLP patches its Add to `x + 0 -> x`, so the next norm reads
the residual alone. The sites, per layer in stream order, are the transforms and norms that survive to
absorb it: Q/K/V and the MLP's up (and gate) projections read a norm's output (*consumers*), O and down
write into a residual Add (*writers*), and the two LayerNormalizations (*norms*).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from .stream import _after_bias, _residual_add

__all__ = ["LiveSite", "Site", "live_site", "postnorm_sites"]

#: Kinds of fit site.
CONSUMER, WRITER, NORM = "consumer", "writer", "norm"
#: Groups per layer: Q/K/V, O, LN1, up (+ gate), down, LN2. Sites of one group read nothing another site of
#: the same group computes, so one run of the pruned model feeds all of them.
GROUPS_PER_LAYER = 6


@dataclass(frozen=True)
class Site:
    """One refittable node of the unpruned encoder, named by the unpruned graph's tensors."""

    kind: str  # CONSUMER, WRITER or NORM
    layer: int
    group: int  # layer * GROUPS_PER_LAYER + position of its group in the layer
    node: str
    output: str  # a transform's output after its bias Add; a norm's output
    sum: str | None = None  # WRITER: the pre-norm sum its residual Add computes (what the fit reproduces)

    @property
    def target(self) -> str:
        """The unpruned tensor the refit reproduces: a writer's pre-norm sum, else the node's own output."""
        return self.sum if self.kind == WRITER else self.output


@dataclass(frozen=True)
class LiveSite:
    """A site as it stands in the pruned graph: the tensors its fit reads there."""

    site: Site
    node: gs.Node
    output: gs.Tensor
    input: str  # the activation the node reads (a norm's input: the pre-norm sum)
    residual: str | None = None  # WRITER: the other operand of its residual Add


def _norm_after(output: gs.Tensor) -> tuple[gs.Node, gs.Node] | None:
    """(residual Add, LayerNormalization) when OUTPUT is added to the stream and the sum feeds only a norm."""
    add = _residual_add(output)
    if add is None or len(add.outputs[0].outputs) != 1:
        return None
    norm = add.outputs[0].outputs[0]
    if norm.op != "LayerNormalization" or norm.inputs[0] is not add.outputs[0]:
        return None
    return add, norm


def _layer_sites(layer) -> list[Site] | None:
    """The six groups of sites of one TransformerLayer, or None if it is not post-norm."""
    l, base = layer.index, layer.index * GROUPS_PER_LAYER
    attention = layer.attention
    down = layer.mlp.get("mlp_down")
    readers = [layer.mlp[k] for k in ("mlp_gate", "mlp_up") if k in layer.mlp]
    if down is None or not readers:
        return None
    down_out = _after_bias(down.outputs[0])
    after_attention, after_mlp = _norm_after(attention.output), _norm_after(down_out)
    if after_attention is None or after_mlp is None:
        return None
    sites = [Site(CONSUMER, l, base, n.name, _after_bias(n.outputs[0]).name) for n in (attention.q, attention.k,
                                                                                       attention.v)]
    sites.append(Site(WRITER, l, base + 1, attention.o.name, attention.output.name, after_attention[0].outputs[0].name))
    sites.append(Site(NORM, l, base + 2, after_attention[1].name, after_attention[1].outputs[0].name))
    sites += [Site(CONSUMER, l, base + 3, n.name, _after_bias(n.outputs[0]).name) for n in readers]
    sites.append(Site(WRITER, l, base + 4, down.name, down_out.name, after_mlp[0].outputs[0].name))
    sites.append(Site(NORM, l, base + 5, after_mlp[1].name, after_mlp[1].outputs[0].name))
    return sites


def postnorm_sites(session) -> list[Site]:
    """The fit sites of SESSION's unpruned encoder in stream order; [] unless every layer is post-norm (both
    residual Adds feed a LayerNormalization only) with a plain or gated MLP."""
    sites: list[Site] = []
    for layer in session.layers:
        found = _layer_sites(layer)
        if found is None:
            return []
        sites += found
    return sites


def live_site(graph: gs.Graph, site: Site) -> LiveSite | str:
    """SITE in the pruned GRAPH, or why it cannot be fitted there (its node was pruned, ...)."""
    node = next((n for n in graph.nodes if n.name == site.node), None)
    if node is None:
        return "pruned"
    if site.kind == NORM:
        return LiveSite(site, node, node.outputs[0], node.inputs[0].name)
    output = _after_bias(node.outputs[0])
    if output.name != site.output:
        return "its output is no longer the unpruned one"
    if site.kind == CONSUMER:
        return LiveSite(site, node, output, node.inputs[0].name)
    add = _residual_add(output)
    if add is None:
        return "no residual Add after it"
    residual = add.inputs[0] if add.inputs[1] is output else add.inputs[1]
    return LiveSite(site, node, output, node.inputs[0].name, residual.name)
