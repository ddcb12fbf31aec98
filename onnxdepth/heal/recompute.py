"""Gradient checkpointing for the converted ONNX graph: its forward pass run as SEGMENTS contiguous runs of
nodes, each under `torch.utils.checkpoint` (non-reentrant), so that training keeps only the tensors that cross
a segment boundary and recomputes the rest during the backward pass (about one more forward pass of time for
activation memory that falls with the number of segments).

onnx2torch gives a `torch.fx.GraphModule` with no layer structure to wrap (an ONNX graph is a flat list of
nodes), so the segments are cut from its node list by hand: an fx interpreter over ranges of nodes, which is
what `torch.fx.Interpreter` does for a whole graph, with the values live across each cut passed explicitly.
The weights are read through the module at every run (get_attr), so LoRA parametrizations and in-place
updates are seen as in the plain module. Without gradients (held-out checks) the plain module runs.
"""

from __future__ import annotations

__all__ = ["Checkpointed"]


def _segments(nodes: list, count: int) -> list[list]:
    """NODES (topological order) cut into COUNT contiguous, nearly equal runs (fewer when there are few nodes)."""
    count = max(1, min(count, len(nodes)))
    # Run k holds nodes [k * n / count, (k + 1) * n / count).
    bounds = [round(k * len(nodes) / count) for k in range(count + 1)]
    return [nodes[bounds[k]:bounds[k + 1]] for k in range(count) if bounds[k + 1] > bounds[k]]


class Checkpointed:
    """MODULE (an fx GraphModule) called as before, its forward checkpointed in SEGMENTS runs when gradients are
    on (a torch.nn.Module, built lazily so this module imports without torch)."""

    def __new__(cls, module, segments: int):
        import torch
        from torch.fx.node import map_arg
        from torch.utils.checkpoint import checkpoint

        graph = module.graph
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        output = next(n for n in graph.nodes if n.op == "output")
        body = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
        runs = _segments(body, segments)
        run_of = {node: k for k, run in enumerate(runs) for node in run}
        # For each run: the values it reads that earlier runs (or the inputs) made, and the values it makes that
        # a later run or the output reads.
        reads, keeps = [], []
        for k, run in enumerate(runs):
            inside = set(run)
            reads.append(list(dict.fromkeys(i for n in run for i in n.all_input_nodes if i not in inside)))
            keeps.append([n for n in run if any(run_of.get(u, len(runs)) > k for u in n.users)])
        # After run k: the values a later run or the output still reads (the rest are dropped from the forward's
        # own table; holding them would undo the checkpointing).
        later = [{i for j in range(k + 1, len(runs)) for i in reads[j]} | set(output.all_input_nodes)
                 for k in range(len(runs))]

        def attribute(target: str):
            value = module
            for part in target.split("."):
                value = getattr(value, part)
            return value

        def execute(node, env: dict):
            args = map_arg(node.args, lambda n: env[n])
            kwargs = map_arg(node.kwargs, lambda n: env[n])
            if node.op == "get_attr":
                return attribute(node.target)
            if node.op == "call_module":
                return module.get_submodule(node.target)(*args, **kwargs)
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            return getattr(args[0], node.target)(*args[1:], **kwargs)  # call_method

        def run_segment(k: int, *values):
            env = dict(zip(reads[k], values))
            for node in runs[k]:
                env[node] = execute(node, env)
            return tuple(env[n] for n in keeps[k])

        class CheckpointedModule(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = module
                self.segments = len(runs)

            def forward(self, *inputs):
                if not torch.is_grad_enabled():
                    return self.inner(*inputs)
                env = dict(zip(placeholders, inputs))
                for k in range(len(runs)):
                    made = checkpoint(run_segment, k, *[env[n] for n in reads[k]], use_reentrant=False)
                    env.update(zip(keeps[k], made))
                    env = {n: v for n, v in env.items() if n in later[k]}
                return map_arg(output.args[0], lambda n: env[n])

        return CheckpointedModule()
