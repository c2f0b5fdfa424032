"""PnP solvers as monitored fixed-point iterations."""

from .defaults import TUNED, Tuned, tuned
from .loop import STATUSES, PnPResult, run_scheme, solve
from .monitor import FLOAT_SLACK, ConvergenceMonitor, History, Violation
from .relaxed import KrasnoselskiiMann
from .schemes import ADMM, FISTA, SCHEMES, DouglasRachford, ForwardBackward, HalfQuadraticSplitting, Scheme
from .stepsize import check_step, default_step

__all__ = [
    "ADMM",
    "FISTA",
    "FLOAT_SLACK",
    "SCHEMES",
    "STATUSES",
    "TUNED",
    "Tuned",
    "ConvergenceMonitor",
    "DouglasRachford",
    "ForwardBackward",
    "HalfQuadraticSplitting",
    "History",
    "KrasnoselskiiMann",
    "PnPResult",
    "Scheme",
    "Violation",
    "check_step",
    "default_step",
    "run_scheme",
    "solve",
    "tuned",
]
