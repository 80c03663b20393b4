"""Networks for ODE dynamics ``f(t, x)`` that can also return their exact Jacobian ``df/dx``.

Every layer maps ``(t, h, J)`` to ``(t, h', J')`` where ``J = dh/dx`` has shape ``(B, width, D)``.
Propagating the Jacobian forward costs about ``D + 1`` forward passes and needs no autograd, so the
exact divergence ``tr(df/dx)`` (and the Frobenius norm used by RNODE) is cheap for small ``D`` and
works under ``torch.no_grad`` for serving. Time conditioning: concat-squash layers (FFJORD,
arXiv:1810.01367) or a sin/cos positional encoding of ``t`` and ``x``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "ODENet", "build_odenet"]

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
    """``(W h + b) * sigmoid(a t + c) + d t`` (FFJORD's time-conditioned linear layer)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.gate = nn.Linear(1, dim_out)
        self.bias = nn.Linear(1, dim_out, bias=False)

    def forward(self, t: Tensor, h: Tensor, jac: Tensor | None) -> tuple[Tensor, Tensor | None]:
        tt = t.reshape(1, 1).to(h)
        gate = torch.sigmoid(self.gate(tt))
        out = self.linear(h) * gate + self.bias(tt)
        if jac is None:
            return out, None
        return out, torch.matmul(self.linear.weight, jac) * gate.unsqueeze(-1)


class PlainLinear(nn.Module):
    """A linear layer that ignores time (used after a positional encoding)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, t: Tensor, h: Tensor, jac: Tensor | None) -> tuple[Tensor, Tensor | None]:
        out = self.linear(h)
        return out, None if jac is None else torch.matmul(self.linear.weight, jac)


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

    def forward(self, t: Tensor, x: Tensor, jac: Tensor | None) -> tuple[Tensor, Tensor | None]:
        batch = x.shape[0]
        _, sin_x, cos_x = self._encode(x)  # (B, D, K)
        tt = t.reshape(1, 1).to(x).expand(batch, 1)
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
        return out, torch.matmul(enc_jac, jac) if jac.dim() == 3 else enc_jac


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
        jac: Tensor | None = None
        if with_jacobian:
            jac = torch.eye(self.dim, dtype=x.dtype, device=x.device).expand(x.shape[0], -1, -1)
        h = x
        if self.encoding is not None:
            h, jac = self.encoding(t, h, jac)
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            h, jac = layer(t, h, jac)
            if index < last:
                h, slope = self.activation(h)
                if jac is not None:
                    jac = jac * slope.unsqueeze(-1)
        return h, jac

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self._run(t, x, with_jacobian=False)[0]

    def forward_with_jacobian(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``f`` of shape ``(B, D)`` and ``df/dx`` of shape ``(B, D, D)``."""
        f, jac = self._run(t, x, with_jacobian=True)
        assert jac is not None
        return f, jac


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
