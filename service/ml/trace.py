"""Closed-form exact divergence ``tr(df/dx)`` of a concat-squash MLP with one or two hidden layers.

Layer ``i`` of :class:`~service.ml.nets.ODENet` maps ``h -> g_i * (W_i h + b_i) + s_i t`` with the
time gate ``g_i = sigmoid(a_i t + c_i)``; hidden layers are followed by the activation ``sigma``.
With ``S_i = diag(sigma'(z_i))`` at the pre-activations ``z_i`` of a point, and ``G_i = diag(g_i)``:

* two hidden layers: ``J = G3 W3 S2 G2 W2 S1 G1 W1``. With ``P = W1 G3 W3`` (``H1 x H2``, depends on
  ``t`` but not on ``x``), ``tr J = sum_{k,l} s2_k g2_k W2[k,l] g1_l s1_l P[l,k] = s1^T Q s2`` where
  ``Q[l,k] = g1_l W2[k,l] g2_k P[l,k]``;
* one hidden layer: ``J = G2 W2 S1 G1 W1`` and ``tr J = s1 . q`` with ``q_l = g1_l (W1 G2 W2)[l,l]``.

Building ``Q`` costs ``O(D H1 H2)`` once per evaluation, shared by the batch; each point then costs one
``O(H1 H2)`` bilinear form, about one hidden layer's forward, instead of the ``D`` tangents of the
forward-mode Jacobian. Everything is plain tensor algebra, so it is differentiable (training) and
works in any dtype. Other nets (positional encoding, three or more hidden layers) keep the
tangent path; :func:`supports_closed_form` says which applies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["MAX_HIDDEN_LAYERS", "closed_form_divergence", "supports_closed_form", "trace_factor"]

MAX_HIDDEN_LAYERS = 2
"""Beyond two hidden layers the trace is a trilinear (or higher) form: no per-point saving."""


def supports_closed_form(num_hidden_layers: int, concat_squash: bool) -> bool:
    """Whether a net with this many hidden layers and layer kind has the closed-form trace."""
    return concat_squash and 1 <= num_hidden_layers <= MAX_HIDDEN_LAYERS


def trace_factor(weights: Sequence[Tensor], gates: Sequence[Tensor]) -> Tensor:
    """The point-independent factor of the trace: ``q`` ``(H1,)`` or ``Q`` ``(H1, H2)``.

    ``weights`` are the layers' matrices transposed, ``V_i = W_i^T`` of shape ``(in, out)``;
    ``gates`` the time gates ``g_i`` of shape ``(out,)``, one per layer.
    """
    if len(weights) == 2:
        v1, v2 = weights
        g1, g2 = gates
        # (W1 G2 W2)[l, l] = sum_i V1[i, l] g2_i V2[l, i]
        return g1 * (v1 * g2.unsqueeze(1) * v2.t()).sum(0)
    if len(weights) == 3:
        v1, v2, v3 = weights
        g1, g2, g3 = gates
        p = torch.mm((v1 * g3.unsqueeze(1)).t(), v3.t())  # W1 G3 W3: (H1, H2)
        return v2 * p * g1.unsqueeze(1) * g2  # Q[l, k] = g1_l W2[k, l] g2_k P[l, k]
    raise ValueError(f"the closed-form trace takes 1 or 2 hidden layers, got {len(weights) - 1}")


def closed_form_divergence(factor: Tensor, slopes: Sequence[Tensor]) -> Tensor:
    """``tr(df/dx)`` per point ``(B,)`` from :func:`trace_factor` and the hidden layers' activation
    slopes ``sigma'(z_i)``, each ``(B, H_i)``."""
    if len(slopes) == 1:
        return torch.mv(slopes[0], factor)
    first, second = slopes
    return (torch.mm(first, factor) * second).sum(-1)
