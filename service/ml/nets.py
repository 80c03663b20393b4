"""Networks for ODE dynamics ``f(t, x)`` that can also return their exact Jacobian ``df/dx``.

Every layer maps ``(t, h, J)`` to ``(t, h', J')`` where ``J = dh/dx`` is carried transposed, with
shape ``(B, D, width)``: a layer's Jacobian update is then one plain matrix product with its weight
(``F.linear``), the same call as its forward, with no batched-matmul broadcasting. The first layer
sees the identity and returns ``W^T`` scaled by its time gate, shared by the batch. Propagating the
Jacobian forward costs about ``D + 1`` forward passes and needs no autograd, so the exact divergence
``tr(df/dx)`` (and the Frobenius norm used by RNODE) is cheap for small ``D`` and works under
``torch.no_grad`` for serving. Time conditioning: concat-squash layers (FFJORD, arXiv:1810.01367) or
a sin/cos positional encoding of ``t`` and ``x``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "LeanJacobianNet", "ODENet", "build_odenet"]

Activation = Literal["tanh", "softplus", "elu", "relu"]


def _tanh(a: Tensor) -> tuple[Tensor, Tensor]:
    y = torch.tanh(a)
    return y, 1 - y * y


def _softplus(a: Tensor) -> tuple[Tensor, Tensor]:
    return nn.functional.softplus(a), torch.sigmoid(a)


def _elu(a: Tensor) -> tuple[Tensor, Tensor]:
    y = nn.functional.elu(a)
    return y, torch.where(a > 0, torch.ones_like(a), y + 1)


def _relu(a: Tensor) -> tuple[Tensor, Tensor]:
    return torch.relu(a), (a > 0).to(a.dtype)


# Each returns (activation, derivative) so the Jacobian can be carried through.
ACTIVATIONS: dict[str, Callable[[Tensor], tuple[Tensor, Tensor]]] = {
    "tanh": _tanh,
    "softplus": _softplus,
    "elu": _elu,
    "relu": _relu,
}


class ConcatSquashLinear(nn.Module):
    """``(W h + b) * sigmoid(a t + c) + d t`` (FFJORD's time-conditioned linear layer).

    ``forward`` takes ``t`` as a ``(1, 1)`` tensor in the dtype of ``h``; ``jac`` is the transposed
    Jacobian ``(B, D, width_in)``, None when not wanted, or :data:`IDENTITY` for ``h = x``.
    """

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.gate = nn.Linear(1, dim_out)
        self.bias = nn.Linear(1, dim_out, bias=False)

    def forward(self, tt: Tensor, h: Tensor, jac: Tensor | None) -> tuple[Tensor, Tensor | None]:
        gate = torch.sigmoid(self.gate(tt))  # (1, out)
        out = torch.addcmul(self.bias(tt), self.linear(h), gate)
        return out, _linear_jacobian(self.linear.weight, jac, gate)


class PlainLinear(nn.Module):
    """A linear layer that ignores time (used after a positional encoding)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, tt: Tensor, h: Tensor, jac: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return self.linear(h), _linear_jacobian(self.linear.weight, jac, None)


IDENTITY = torch.empty(0)
"""Marks ``jac = d x / d x``: the first layer builds its Jacobian from its weight alone."""


def _linear_jacobian(weight: Tensor, jac: Tensor | None, gate: Tensor | None) -> Tensor | None:
    """Transposed Jacobian after ``h -> (W h) * gate``: ``J W^T * gate``, ``(B or 1, D, out)``."""
    if jac is None:
        return None
    out = weight.t().unsqueeze(0) if jac is IDENTITY else nn.functional.linear(jac, weight)
    return out if gate is None else out * gate


class PositionalEncoding(nn.Module):
    """``[x, sin(w_k x), cos(w_k x), t, sin(w_k t), cos(w_k t)]`` with ``w_k = 2^k``, k < K.

    Output width ``(D + 1) * (1 + 2K)``. Its Jacobian in ``x`` is block diagonal, built directly.
    """

    def __init__(self, dim: int, num_frequencies: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("freqs", 2.0 ** torch.arange(num_frequencies, dtype=torch.float32))
        self.width = (dim + 1) * (1 + 2 * num_frequencies)

    def _encode(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        angles = v.unsqueeze(-1) * self.freqs.to(v)  # (..., n, K)
        return angles, torch.sin(angles), torch.cos(angles)

    def forward(self, tt: Tensor, x: Tensor, jac: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``tt``: time as ``(1, 1)``; ``jac``: None or :data:`IDENTITY` (the encoding comes first)."""
        batch = x.shape[0]
        _, sin_x, cos_x = self._encode(x)  # (B, D, K)
        tt = tt.expand(batch, 1)
        _, sin_t, cos_t = self._encode(tt)
        parts = [x, sin_x.flatten(1), cos_x.flatten(1), tt, sin_t.flatten(1), cos_t.flatten(1)]
        out = torch.cat(parts, dim=1)
        if jac is None:
            return out, None
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        freqs = self.freqs.to(x)
        # d sin(w x_i)/dx_j = w cos(w x_i) delta_ij; rows ordered (i, k) as in flatten above.
        d_sin = (cos_x * freqs).unsqueeze(-1) * eye.view(1, self.dim, 1, self.dim)
        d_cos = (-sin_x * freqs).unsqueeze(-1) * eye.view(1, self.dim, 1, self.dim)
        zeros_t = x.new_zeros(batch, self.width - self.dim * (1 + 2 * len(self.freqs)), self.dim)
        enc_jac = torch.cat(
            [
                eye.expand(batch, self.dim, self.dim),
                d_sin.reshape(batch, -1, self.dim),
                d_cos.reshape(batch, -1, self.dim),
                zeros_t,
            ],
            dim=1,
        )
        return out, enc_jac.transpose(1, 2)  # transposed: (B, D, width)


class ODENet(nn.Module):
    """An MLP for ``f(t, x)``: ``(B, D) -> (B, D)``; optional exact Jacobian ``(B, D, D)``."""

    def __init__(
        self,
        dim: int,
        hidden_dims: tuple[int, ...],
        activation: Activation,
        time_conditioning: Literal["concatsquash", "positional"],
        num_frequencies: int,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.activation = ACTIVATIONS[activation]
        self.encoding: PositionalEncoding | None = None
        layer_cls: type[nn.Module] = ConcatSquashLinear
        width = dim
        if time_conditioning == "positional":
            self.encoding = PositionalEncoding(dim, num_frequencies)
            width = self.encoding.width
            layer_cls = PlainLinear
        dims = [width, *hidden_dims, dim]
        self.layers = nn.ModuleList(layer_cls(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self._init_last_layer_small()

    def _init_last_layer_small(self) -> None:
        # Start close to the identity flow: a small last layer keeps early solves cheap.
        last = self.layers[-1].linear
        with torch.no_grad():
            last.weight.mul_(0.1)
            last.bias.zero_()

    def _run(self, t: Tensor, x: Tensor, with_jacobian: bool) -> tuple[Tensor, Tensor | None]:
        """``f`` and, if asked, the transposed Jacobian ``(B, D, D)`` (``[b, j, i] = df_i/dx_j``)."""
        tt = t.reshape(1, 1).to(x)
        jac: Tensor | None = IDENTITY if with_jacobian else None
        h = x
        if self.encoding is not None:
            h, jac = self.encoding(tt, h, jac)
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            h, jac = layer(tt, h, jac)
            if index < last:
                h, slope = self.activation(h)
                if jac is not None:
                    jac = jac * slope.unsqueeze(1)
        if jac is not None and jac.shape[0] != x.shape[0]:  # a one-layer net: still shared
            jac = jac.expand(x.shape[0], -1, -1)
        return h, jac

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self._run(t, x, with_jacobian=False)[0]

    def lean(self) -> LeanJacobianNet | None:
        """A no-grad snapshot for serving solves; None for positional encoding (module path)."""
        return None if self.encoding is not None else LeanJacobianNet(self)

    def forward_with_jacobian(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``f`` of shape ``(B, D)`` and ``df/dx`` of shape ``(B, D, D)``."""
        f, jac = self._run(t, x, with_jacobian=True)
        assert jac is not None
        return f, jac.transpose(1, 2)


class LeanJacobianNet:
    """A no-grad snapshot of a concat-squash :class:`ODENet` for serving: ``f`` and ``df/dx``.

    Weights are copied once into the layouts the products want (``W^T`` contiguous, gate and bias
    rows as vectors) and the time terms are computed from a Python float, so one evaluation issues
    about a dozen tensor operations per layer instead of the module path's ~50 (op dispatch, not
    arithmetic, dominates at serving batch sizes). Built per solve; stale once the net's weights change.
    """

    def __init__(self, net: ODENet) -> None:
        self.activation = net.activation
        self.layers = [
            (
                layer.linear.weight.detach().t().contiguous(),
                layer.linear.bias.detach().clone(),
                layer.gate.weight.detach().reshape(-1).clone(),
                layer.gate.bias.detach().clone(),
                layer.bias.weight.detach().reshape(-1).clone(),
            )
            for layer in net.layers
        ]

    def __call__(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``f`` ``(B, D)`` and the transposed Jacobian ``(B, D, D)`` (``[b, j, i] = df_i/dx_j``)."""
        time = float(t)
        batch, dim = x.shape
        h, jac = x, None
        last = len(self.layers) - 1
        for index, (weight_t, bias, gate_w, gate_b, shift_w) in enumerate(self.layers):
            gate = torch.sigmoid(torch.add(gate_b, gate_w, alpha=time))
            h = torch.addcmul(shift_w * time, torch.addmm(bias, h, weight_t), gate)
            if jac is None:  # d x / d x = I: the first product is the weight itself
                jac = (weight_t * gate).unsqueeze(0)  # (1, D, out), shared by the batch
            else:
                jac = torch.mm(jac.view(-1, weight_t.shape[0]), weight_t).mul_(gate).view(batch, dim, -1)
            if index < last:
                h, slope = self.activation(h)
                jac = jac * slope.unsqueeze(1)
        return h, jac.expand(batch, dim, dim)


def build_odenet(
    dim: int,
    hidden_dims: tuple[int, ...],
    activation: Activation = "tanh",
    time_conditioning: Literal["concatsquash", "positional"] = "concatsquash",
    num_frequencies: int = 4,
) -> ODENet:
    """Construct an :class:`ODENet`; see its docstring for shapes."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return ODENet(dim, tuple(hidden_dims), activation, time_conditioning, num_frequencies)
