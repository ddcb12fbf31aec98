"""Prune(f) (Sec. 3.2.5) as edits on a graph-surgeon copy of the model."""
