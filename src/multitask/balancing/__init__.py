"""Task balancing: how per-task losses (or gradients) become one update. `BALANCERS` maps names to classes."""
from multitask.balancing.aligned_mtl import AlignedMTL
from multitask.balancing.base import (Balancer, GradientBalancer, GramianBalancer, JacobianBalancer,
                                      LossBalancer, WeightedSum)
from multitask.balancing.cagrad import CAGrad
from multitask.balancing.db_mtl import DBMTL
from multitask.balancing.epo import EPO
from multitask.balancing.equal import Equal
from multitask.balancing.graddrop import GradDrop
from multitask.balancing.gradnorm import GradNorm
from multitask.balancing.gradvac import GradVac
from multitask.balancing.imtl import IMTLG, IMTLL
from multitask.balancing.loss_weighting import DWA, FAMO, RLW, GeometricMean
from multitask.balancing.mgda import MGDA
from multitask.balancing.nash_mtl import NashMTL
from multitask.balancing.pcgrad import PCGrad
from multitask.balancing.static import Static
from multitask.balancing.uncertainty import Uncertainty
from multitask.balancing.upgrad import UPGrad

BALANCERS: dict[str, type[Balancer]] = {cls.name: cls for cls in (
    Equal, Static, Uncertainty, DWA, RLW, GeometricMean, IMTLL, FAMO,
    GradNorm, MGDA, PCGrad, GradVac, GradDrop, CAGrad, IMTLG, AlignedMTL, NashMTL, UPGrad, DBMTL, EPO,
)}

__all__ = ["Balancer", "LossBalancer", "GradientBalancer", "GramianBalancer", "JacobianBalancer", "WeightedSum",
           "BALANCERS"] + [cls.__name__ for cls in BALANCERS.values()]
