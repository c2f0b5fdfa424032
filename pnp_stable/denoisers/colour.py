"""The orthonormal opponent colour basis the colour denoisers work in: one luminance and two chrominances.

Its rows are (1, 1, 1)/√3, (1, 0, −1)/√2 and (1, −2, 1)/√6, so QQᵀ = QᵀQ = I: a map applied in these components,
Qᵀ N Q, keeps N's Lipschitz constant and averagedness (an orthogonal change of basis)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["OPPONENT", "opponent_matrix"]

#: The opponent basis (rows), in float64.
OPPONENT = torch.tensor([[1, 1, 1], [1, 0, -1], [1, -2, 1]], dtype=torch.float64) / torch.tensor(
    [[3.0], [2.0], [6.0]], dtype=torch.float64).sqrt()


def opponent_matrix(dtype=torch.float64) -> Tensor:
    """:data:`OPPONENT` in ``dtype`` (rows: luminance, red − blue, green against magenta)."""
    return OPPONENT.to(dtype)
