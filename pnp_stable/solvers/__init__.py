"""PnP solvers as monitored fixed-point iterations."""

from .anderson import Anderson
from .defaults import TUNED, Tuned, tuned
from .guided import GUIDED_DEFAULTS, GuidedDefaults, guided_defaults, guided_solve
from .loop import STATUSES, PnPResult, run_scheme, solve
from .monitor import FLOAT_SLACK, ConvergenceMonitor, History, Violation
from .relaxed import KrasnoselskiiMann
from .schedule import DecreasingSchedule, dpir
from .schemes import ADMM, FISTA, SCHEMES, DouglasRachford, ForwardBackward, HalfQuadraticSplitting, Scheme
from .stepsize import check_step, default_step

__all__ = [
    "ADMM",
    "Anderson",
    "FISTA",
    "FLOAT_SLACK",
    "GUIDED_DEFAULTS",
    "guided_defaults",
    "GuidedDefaults",
    "DecreasingSchedule",
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
    "dpir",
    "guided_solve",
    "run_scheme",
    "solve",
    "tuned",
]
