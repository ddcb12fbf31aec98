"""Prune(f) (Sec. 3.2.5) as edits on a graph-surgeon copy of the model.

One step, module by module: session.py (the front: graph, caches) -> planning.py (pure: a Plan, plan.py,
with the channel choice of channels.py and the coupled-op searches of search.py) -> apply.py (the passes,
by plan.action) -> patch.py (PatchIdentityArithmetic) -> export.py (the ONNX model).
"""

__all__: list[str] = []
