"""Task balancing: how per-task losses (or gradients) become one update. `BALANCERS` maps names to classes."""
from multitask.balancing.base import Balancer, WeightedSum
from multitask.balancing.equal import Equal
from multitask.balancing.static import Static
from multitask.balancing.uncertainty import Uncertainty

BALANCERS: dict[str, type[Balancer]] = {cls.name: cls for cls in (Equal, Static, Uncertainty)}

__all__ = ["Balancer", "WeightedSum", "Equal", "Static", "Uncertainty", "BALANCERS"]
