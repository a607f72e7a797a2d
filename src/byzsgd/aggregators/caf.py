"""CAF, the covariance-bound agnostic filter (Allouah, Guerraoui, Stephan, "Towards Trustworthy
Federated Learning with Untrusted Participants", ICML 2025; ByzFL's ``CAF``).

The filter of robust mean estimation (Diakonikolas et al.) without a known bound on the honest
covariance: weights c_i start at 1 and, while ``sum_i c_i > n - 2f``,

    mu_c    = sum_i c_i x_i / sum_i c_i
    Sigma_c = sum_i c_i (x_i - mu_c)(x_i - mu_c)^T / sum_i c_i     (top eigenpair lambda, v)
    tau_i   = <x_i - mu_c, v>^2
    c_i    <- c_i (1 - tau_i / max_{j: c_j > 0} tau_j)

and the output is the mu_c of the smallest lambda met.

Everything runs on the (n, n) Gram matrix K = (X - p)(X - p)^T of :func:`distances.geometry`
(float64, p the pivot row): with a = c / sum c and P = I - 1 a^T, the centered rows
y_i = x_i - mu_c have Gram matrix Y Y^T = P K P^T, the non-zero eigenvalues of Sigma_c are
those of M = D^1/2 P K P^T D^1/2 / sum c (D = diag c), and for M's top eigenvector u,
v = Y^T D^1/2 u / sqrt(lambda sum c), so Y v = (P K P^T) D^1/2 u / sqrt(lambda sum c).
The (n, d) input is read twice: once for K, once for the output mu = X^T a.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._base import as_gradients, check_f, require
from ._registry import register
from .distances import geometry


def check_caf(n: int, f: int) -> None:
    check_f("caf", n, f)
    require("caf", 2 * f < n, "f < n/2", n, f)


def caf_weights(gram: Tensor, valid: Tensor, f: int) -> Tensor:
    """The weights a (float64, (n,), summing to 1, 0 on invalid rows) of CAF's output
    ``mu = sum_i a_i x_i``, from the Gram matrix of the rows around any point (float64, (n, n))
    and the rows whose Gram entries are finite (``valid``). Invalid rows (NaN, inf, a norm that
    overflows) start with weight 0; at least one iteration runs when a row is valid. All zeros
    when no row is valid."""
    n = gram.shape[0]
    both = valid[:, None] & valid[None, :]
    k = torch.where(both, gram, torch.zeros((), dtype=torch.float64))
    c = valid.to(torch.float64)
    best = torch.zeros(n, dtype=torch.float64)
    best_lam = math.inf
    first = True
    while (total := float(c.sum())) > 0 and (first or total > n - 2 * f):
        first = False
        a = c / total
        ka = k @ a
        yy = k - ka[:, None] - ka[None, :] + float(a @ ka)  # Y Y^T, y_i = x_i - mu_c
        s = c.sqrt()
        lam, vecs = torch.linalg.eigh(s[:, None] * yy * s[None, :] / total)
        top = float(lam[-1])
        if top < best_lam:
            best_lam, best = top, a
        if not top > 0:  # the weighted rows coincide: no smaller covariance exists
            break
        tau = (yy @ (s * vecs[:, -1])).square_() / (top * total)
        live = c > 0
        tau_max = float(tau[live].max())
        if not tau_max > 0:
            break
        c = torch.where(live & (tau >= tau_max), 0.0, c * (1.0 - tau / tau_max)).clamp_(min=0.0)
    return best


@register("caf", summary="covariance-bound agnostic filter: down-weight along the top "
          "eigenvector until n - 2f weight is left (Allouah et al. 2025)",
          requires=check_caf)
def caf(gradients: Tensor, f: int) -> Tensor:
    """CAF (Allouah, Guerraoui, Stephan, ICML 2025; the filter of ByzFL's ``CAF``): start from
    weights c_i = 1; while ``sum c > n - 2f``, take the weighted mean mu_c, the top eigenpair
    (lambda, v) of the weighted covariance ``Sigma_c = sum_i c_i (x_i - mu_c)(x_i - mu_c)^T /
    sum c``, and set ``c_i <- c_i (1 - tau_i / max tau)`` with ``tau_i = <x_i - mu_c, v>^2``;
    return the mu_c of the smallest lambda seen. Needs f < n/2.

    Differences from ByzFL's code, each a choice the paper's algorithm leaves open or ByzFL
    approximates: (1) the top eigenpair is exact (eigen-decomposition of an (n, n) matrix
    derived from one Gram matrix, see the module docstring), where ByzFL runs one power
    iteration from an unseeded random vector, so this rule is deterministic; (2) max tau is
    taken over the rows of positive weight, so each iteration removes one row and the loop
    ends within n iterations (over all rows, a removed row can hold the maximum forever);
    (3) when the weighted rows coincide (lambda = 0) that mean is returned (ByzFL divides
    0 by 0).

    Hostile rows: a row with a non-finite value, or whose squared distance to the pivot
    overflows (float32 values of 1e20), starts with weight 0 and is never read again.
    """
    x = as_gradients(gradients, "caf")
    check_caf(x.shape[0], f)
    geo = geometry(x)
    assert geo.gram is not None
    weights = caf_weights(geo.gram, geo.valid, f)
    if not bool((weights > 0).any()):
        return x.new_zeros(x.shape[1])
    return geo.combine(x, weights)
