"""The latency objective: ONNX Runtime's per-node kernel times of a model (`profile`), what each unit's Prune(f)
saves of them (`unit_costs`), and the selection objective that ranks by damage per ms saved and stops at a
share of the profiled latency (`objective`)."""

from .objective import Objective, objective_for
from .profile import Profile, profile_model
from .unit_costs import UnitCosts

__all__ = ["Objective", "Profile", "UnitCosts", "objective_for", "profile_model"]
