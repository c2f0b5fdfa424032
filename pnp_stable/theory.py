"""Averagedness algebra and the ``Certificate`` value: the one place where the theory lives.

T is α-averaged (α ∈ (0, 1)) iff T = (1 − α)I + αN with N non-expansive, equivalently

    ‖Tx − Ty‖² ≤ ‖x − y‖² − (1 − α)/α · ‖(I − T)x − (I − T)y‖²        (A)

α = 1/2 is firmly non-expansive; α = 1 (merely non-expansive) is never called averaged here.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Iterable

__all__ = [
    "Certificate",
    "compose_averagedness",
    "gradient_step_averagedness",
    "relaxation_averagedness",
    "relaxation_for_target",
    "averagedness_defect",
    "ceil_steps",
    "format_bound",
]


def format_bound(value: float, digits: int = 6, up: bool = True) -> str:
    """``value`` to ``digits`` significant digits rounded outward, so that a printed bound is still a bound:
    up for upper bounds (a Lipschitz constant or an α: 1.0000004 prints as 1.00001, never as 1), down for lower
    bounds (``up=False``: a certified radius)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    scale = 10.0 ** (math.floor(math.log10(abs(value))) - digits + 1)
    return f"{(math.ceil if up else math.floor)(value / scale) * scale:.{digits}g}"


def _check_alpha(alpha: float, name: str = "alpha") -> float:
    alpha = float(alpha)
    if not 0 < alpha < 1:
        raise ValueError(f"{name} must lie in (0, 1) for an averaged map, got {alpha}")
    return alpha


def compose_averagedness(alphas: Iterable[float]) -> float:
    """α of T_m∘…∘T_1 for α_i-averaged T_i (Combettes–Yamada 2015): α = κ/(1 + κ), κ = Σ α_i/(1 − α_i)."""
    kappa = 0.0
    for a in alphas:
        if a != 0:  # α = 0 is the identity, which adds nothing
            a = _check_alpha(a)
            kappa += a / (1 - a)
    return kappa / (1 + kappa)


def gradient_step_averagedness(tau: float, lipschitz: float) -> float:
    """α = τL/2 of I − τ∇f for convex f with L-Lipschitz gradient; requires 0 < τ < 2/L."""
    if not lipschitz > 0:
        raise ValueError(f"Lipschitz constant must be > 0, got {lipschitz}")
    if not 0 < tau < 2 / lipschitz:
        raise ValueError(
            f"step τ = {tau:.6g} is outside (0, 2/L) = (0, {2 / lipschitz:.6g}); the gradient step is then not averaged"
        )
    return tau * lipschitz / 2


def relaxation_averagedness(alpha: float, theta: float) -> float:
    """α' = θα of (1 − θ)I + θD for α-averaged D; requires 0 < θ < 1/α."""
    alpha = _check_alpha(alpha)
    if not 0 < theta < 1 / alpha:
        raise ValueError(f"relaxation θ = {theta} must lie in (0, 1/α) = (0, {1 / alpha:.6g})")
    return theta * alpha


def relaxation_for_target(alpha: float, target: float) -> float:
    """θ = target/α such that (1 − θ)I + θD is ``target``-averaged (θ = 1/(2α) gives firm non-expansiveness).

    ``alpha = 1`` (a merely non-expansive D) is allowed: then θ = target.
    """
    target = _check_alpha(target, "target alpha")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    return target / alpha


def averagedness_defect(dx2: float, dtx2: float, dresid2: float, alpha: float) -> float:
    """Left minus right side of (A), from ‖x − y‖², ‖Tx − Ty‖², ‖(I−T)x − (I−T)y‖²; ≤ 0 when (A) holds."""
    return dtx2 - (dx2 - (1 - alpha) / alpha * dresid2)


@dataclass(frozen=True)
class Certificate:
    """What is proved about a map D: ‖Dx − Dy‖ ≤ lipschitz·‖x − y‖ and, if ``alpha`` is set, (A).

    ``alpha`` is None when no averagedness is certified. ``guaranteed`` is False for
    certificates that hold only approximately (e.g. an iterative prox stopped early);
    ``method`` says which bounds were used, ``tolerance`` their numerical slack; for a map computed by an inner
    solver (an iterative prox) it is the RMS bound on each output's distance to the certified map, which the
    solvers add to their residuals before they call a run converged. ``trusted`` names what the bounds rest on
    that pnp-stable did not prove: a certificate asserted by a caller's object, kept through every wrapper
    (tiling, self-ensemble, noise-level switch, relaxation) so that no β built on it is called proved.
    ``scheduled``: the tolerance is the inner solvers' (their :class:`~pnp_stable._accuracy.AccuracyRecord`) times a
    fixed factor, so that a PnP run can lower it along its summable schedule and bound each evaluation's error by
    what the solvers reached; False for a fixed tolerance (a caller's, an anchored tiling's cached offset).
    """

    lipschitz: float | None
    alpha: float | None
    method: str
    guaranteed: bool = True
    tolerance: float = 0.0
    trusted: tuple[str, ...] = ()
    scheduled: bool = False

    def __post_init__(self):
        object.__setattr__(self, "trusted", tuple(self.trusted))
        if self.alpha is not None:
            _check_alpha(self.alpha)
            if self.lipschitz is None:  # an α-averaged map is non-expansive: (A) gives ‖Dx − Dy‖ ≤ ‖x − y‖
                object.__setattr__(self, "lipschitz", 1.0)
        if self.lipschitz is not None and not self.lipschitz >= 0:
            raise ValueError(f"lipschitz bound must be >= 0, got {self.lipschitz}")

    @property
    def solved(self) -> bool:
        """True when ``tolerance`` bounds an inner solver's error (above 1e-9), not a closed-form map's rounding
        slack (a network states 1e-12)."""
        return self.tolerance > 1e-9

    @property
    def nonexpansive(self) -> bool:
        return self.lipschitz is not None and self.lipschitz <= 1

    @classmethod
    def none(cls, reason: str) -> "Certificate":
        """No guarantee at all (e.g. an unconstrained network)."""
        return cls(lipschitz=None, alpha=None, method=reason, guaranteed=False)

    def relaxed(self, theta: float) -> "Certificate":
        """Certificate of (1 − θ)I + θD: θα-averaged (a non-expansive D gives θ when θ < 1)."""
        if self.alpha is not None:
            alpha = relaxation_averagedness(self.alpha, theta)
        elif self.nonexpansive and 0 < theta < 1:
            alpha = theta
        else:
            raise ValueError("relaxation needs an averaged or non-expansive map with θ in (0, 1)")
        lipschitz = abs(1 - theta) + theta * self.lipschitz
        return replace(self, alpha=alpha, lipschitz=min(lipschitz, 1.0), method=f"{self.method}; relaxed with θ = {theta:.6g}")

    def trusting(self, source: str) -> "Certificate":
        """The same certificate, noted as resting on ``source`` (an assertion pnp-stable did not verify)."""
        return self if source in self.trusted else replace(self, trusted=(*self.trusted, source))

    def to_json(self) -> str:
        fields = asdict(self)
        if not fields["trusted"]:  # a proved certificate is stored as before the field existed
            del fields["trusted"]
        del fields["scheduled"]  # a property of the live inner solver, not of stored weights
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Certificate":
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as err:
            raise ValueError(f"corrupt certificate metadata: {err}") from err

    def __str__(self) -> str:
        if self.lipschitz is None and self.alpha is None:
            return f"no certificate ({self.method})"
        kind = "guaranteed" if self.guaranteed else "NOT guaranteed"
        lip = "Lipschitz unknown" if self.lipschitz is None else f"Lipschitz ≤ {format_bound(self.lipschitz)}"
        alpha = "not averaged" if self.alpha is None else f"averaged with α = {format_bound(self.alpha)}"
        trusted = f"; resting on the caller's {' and '.join(self.trusted)} (not verified)" if self.trusted else ""
        return f"{lip}, {alpha} ({kind}; {self.method}{trusted})"


def ceil_steps(time: float, rate: float) -> int:
    """Smallest n ≥ 1 with time·rate/n ≤ 1 (guarding against float round-off)."""
    n = max(1, math.ceil(time * rate))
    while time * rate / n > 1:
        n += 1
    return n
