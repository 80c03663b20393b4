"""Networks for ODE dynamics ``f(t, x)`` that can also return their exact Jacobian ``df/dx``.

Every layer maps ``(t, h, J)`` to ``(t, h', J')`` where ``J = dh/dx`` is carried transposed, with
shape ``(B, D, width)``: a layer's Jacobian update is then one plain matrix product with its weight
(``F.linear``), the same call as its forward, with no batched-matmul broadcasting. The first layer
sees the identity and returns ``W^T`` scaled by its time gate, shared by the batch. Propagating the
Jacobian forward costs about ``D + 1`` forward passes and needs no autograd, so the exact divergence
``tr(df/dx)`` (and the Frobenius norm used by RNODE) is cheap for small ``D`` and works under
``torch.no_grad`` for serving. When only the trace is wanted, one or two concat-squash hidden
layers have it in closed form (:mod:`service.ml.trace`, ``forward_with_trace``), at about the cost
of one more hidden layer whatever ``D``; ``trace_path`` says which a net uses. Time conditioning:
concat-squash layers (FFJORD, arXiv:1810.01367) or a sin/cos positional encoding of ``t`` and ``x``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from service.ml.trace import closed_form_divergence, supports_closed_form, trace_factor

__all__ = ["ACTIVATIONS", "LeanJacobianNet", "ODENet", "TracePath", "build_odenet"]

Activation = Literal["tanh", "softplus", "elu", "relu"]
TracePath = Literal["closed_form", "tangents"]


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

    def gated(self, tt: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """The output ``(B, out)`` and the time gate ``sigmoid(a t + c)`` ``(1, out)``."""
        gate = torch.sigmoid(self.gate(tt))
        return torch.addcmul(self.bias(tt), self.linear(h), gate), gate

    def forward(self, tt: Tensor, h: Tensor, jac: Tensor | None) -> tuple[Tensor, Tensor | None]:
        out, gate = self.gated(tt, h)
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
        closed = supports_closed_form(len(hidden_dims), self.encoding is None)
        self.trace_path: TracePath = "closed_form" if closed else "tangents"
        """How the exact divergence is computed: :mod:`service.ml.trace`'s closed form, or the
        trace of the forward-mode Jacobian (positional encoding, 3+ hidden layers)."""

    def _init_last_layer_small(self) -> None:
        # Start close to the identity flow: a small last layer keeps early solves cheap.
        last = self.layers[-1].linear
        with torch.no_grad():
            last.weight.mul_(0.1)
            last.bias.zero_()

    def _run(self, t: Tensor, x: Tensor, with_jacobian: bool) -> tuple[Tensor, Tensor | None]:
        """``f`` and, if asked, the transposed Jacobian ``(B, D, D)`` (``[b, j, i] = df_i/dx_j``).

        ``t`` is a scalar, or one time per point ``(B,)`` (flow matching; ``f`` only, no Jacobian)."""
        tt = t.reshape(-1, 1).to(x)
        if with_jacobian and tt.shape[0] != 1:
            raise ValueError("the Jacobian path takes one shared time; got one per point")
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
        """A no-grad snapshot for serving solves; None for positional encoding (module path).

        The snapshot is kept and handed out again while the weights are unchanged: building it
        (transposed weights, concatenated time terms, fresh buffers) cost about 250 us, 4-6 % of a
        16-point density solve. In-place updates (optimizer steps, ``load_state_dict``, ops under
        ``no_grad``) bump a parameter's version and moves give it new storage; either rebuilds it
        (writes through ``param.data`` bump nothing: do not use them). Callers use it one at a
        time (serving holds the model's lock), like the module.
        """
        if self.encoding is not None:
            return None
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        cached = self.__dict__.get("_lean_snapshot")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_lean_snapshot"] = (key, LeanJacobianNet(self))
        return cached[1]

    def forward_with_trace(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``f`` ``(B, D)`` and the exact ``tr(df/dx)`` ``(B,)`` in closed form (differentiable).

        Only for ``trace_path == "closed_form"``; ``t`` is one shared time."""
        if self.trace_path != "closed_form":
            raise ValueError("this net has no closed-form trace: use forward_with_jacobian")
        tt = t.reshape(1, 1).to(x)
        h, gates, slopes = x, [], []
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            h, gate = layer.gated(tt, h)
            gates.append(gate.reshape(-1))
            if index < last:
                h, slope = self.activation(h)
                slopes.append(slope)
        factor = trace_factor([layer.linear.weight.t() for layer in self.layers], gates)
        return h, closed_form_divergence(factor, slopes)

    def forward_with_jacobian(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``f`` of shape ``(B, D)`` and ``df/dx`` of shape ``(B, D, D)``."""
        f, jac = self._run(t, x, with_jacobian=True)
        assert jac is not None
        return f, jac.transpose(1, 2)


_KEPT_ELEMENTS = 1 << 22  # buffers kept across batch sizes: 16 MiB of float32


class LeanJacobianNet:
    """A no-grad snapshot of a concat-squash :class:`ODENet` for serving: ``f`` and ``df/dx``.

    Op dispatch, not arithmetic, dominates at serving batch sizes, so one evaluation issues as few
    tensor operations as it can:

    * the time terms of every layer come from two concatenated vectors: ``gates = sigmoid(a t + c)``
      and ``consts = b * gates + d t`` for all layers at once (four ops per evaluation);
    * ``f`` and its tangents travel as one stacked buffer ``Z`` of shape ``(1 + D, B, width)``: row 0
      holds the hidden state and row ``1 + j`` its derivative along ``x_j`` (the input rows start
      as the identity), so each layer is one ``mm`` for the state and all ``D`` tangents, a gate
      multiply, the bias on row 0 and, between layers, the activation and its slope (about six ops
      per layer instead of the module path's ~50 per evaluation);
    * buffers are preallocated per batch size and written with ``out=``/in-place ops.

    The returned tensors are views of those buffers, valid until the next call. Stale once the net's
    weights change (:meth:`ODENet.lean` rebuilds it then). Buffers are kept per batch size, least
    recently used dropped first beyond ``_KEPT_ELEMENTS`` in all (serving batch sizes vary); see
    :meth:`trim`.
    """

    def __init__(self, net: ODENet) -> None:
        layers = list(net.layers)
        self.activation = net.activation
        self.weights = [layer.linear.weight.detach().t().contiguous() for layer in layers]  # (in, out)
        self._gate_w = torch.cat([layer.gate.weight.detach().reshape(-1) for layer in layers])
        self._gate_b = torch.cat([layer.gate.bias.detach() for layer in layers])
        self._shift_w = torch.cat([layer.bias.weight.detach().reshape(-1) for layer in layers])
        self._bias = torch.cat([layer.linear.bias.detach() for layer in layers])
        self._gates = torch.empty_like(self._gate_b)
        self._consts = torch.empty_like(self._gate_b)
        widths = [w.shape[1] for w in self.weights]
        self._gate_rows = self._gates.split(widths)
        self._const_rows = self._consts.split(widths)
        self._one = torch.ones(1, dtype=self._bias.dtype, device=self._bias.device)
        self._stacks: dict[int, tuple[list[Tensor], list[Tensor]]] = {}
        self._sizes: dict[int, int] = {}  # elements of each batch size's buffers
        self._kept = 0  # their sum: trim runs after every serving solve, so it is not recounted

    def _buffers(self, batch: int) -> tuple[list[Tensor], list[Tensor]]:
        """``Z`` buffers ``(1 + D, batch, width)`` for the input and each layer, and the slopes."""
        buffers = self._stacks.pop(batch, None)
        if buffers is not None:
            self._stacks[batch] = buffers  # most recently used last
        else:
            dim = self.weights[0].shape[0]
            kw = {"dtype": self._bias.dtype, "device": self._bias.device}
            stacks = [torch.zeros(1 + dim, batch, dim, **kw)]
            stacks[0][1:] = torch.eye(dim, **kw).unsqueeze(1)  # d x / d x_j = e_j for every point
            stacks += [torch.empty(1 + dim, batch, w.shape[1], **kw) for w in self.weights]
            slopes = [torch.empty(batch, w.shape[1], **kw) for w in self.weights[:-1]]
            buffers = self._stacks[batch] = (stacks, slopes)
            self._sizes[batch] = sum(b.numel() for b in (*stacks, *slopes))
            self._kept += self._sizes[batch]
            self.trim(keep_latest=True)
        return buffers

    def trim(self, keep_latest: bool = False) -> None:
        """Drop buffers, least recently used first, until at most ``_KEPT_ELEMENTS`` are kept.

        A solve calls the net on one batch size throughout, so its buffers stay (``keep_latest``);
        after the solve, a batch too large to keep (a plot's grid) is dropped too.
        """
        while len(self._stacks) > int(keep_latest) and self._kept > _KEPT_ELEMENTS:
            oldest = next(iter(self._stacks))
            del self._stacks[oldest]
            self._kept -= self._sizes.pop(oldest)

    def _time_terms(self, t: Tensor) -> None:
        time = float(t)
        torch.add(self._gate_b, self._gate_w, alpha=time, out=self._gates)
        self._gates.sigmoid_()
        torch.mul(self._bias, self._gates, out=self._consts)
        self._consts.add_(self._shift_w, alpha=time)

    def field(self, t: Tensor, x: Tensor) -> Tensor:
        """``f`` ``(B, D)`` alone, without tangents (sampling); a new tensor."""
        self._time_terms(t)
        return self._forward(x, None)

    def field_and_trace(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``f`` ``(B, D)`` and the exact ``tr(df/dx)`` ``(B,)`` in closed form; new tensors.

        Only for nets whose ``trace_path`` is ``"closed_form"`` (:mod:`service.ml.trace`)."""
        self._time_terms(t)
        slopes: list[Tensor] = []
        f = self._forward(x, slopes)
        return f, closed_form_divergence(trace_factor(self.weights, self._gate_rows), slopes)

    def _forward(self, x: Tensor, slopes: list[Tensor] | None) -> Tensor:
        """The field after ``_time_terms``; appends each hidden layer's ``act'`` to ``slopes``."""
        h, last = x, len(self.weights) - 1
        for index, weight in enumerate(self.weights):
            h = torch.mm(h, weight).mul_(self._gate_rows[index]).add_(self._const_rows[index])
            if index < last:
                if slopes is None:
                    h = h.tanh_() if self.activation is _tanh else self.activation(h)[0]
                else:
                    slopes.append(torch.empty_like(h))
                    self._activate(h, slopes[-1])
        return h

    def __call__(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``f`` ``(B, D)`` and the transposed Jacobian ``(B, D, D)`` (``[b, j, i] = df_i/dx_j``)."""
        self._time_terms(t)
        stacks, slopes = self._buffers(x.shape[0])
        stacks[0][0].copy_(x)
        last = len(self.weights) - 1
        for index, weight in enumerate(self.weights):
            z_in, z = stacks[index], stacks[index + 1]
            torch.mm(z_in.view(-1, weight.shape[0]), weight, out=z.view(-1, weight.shape[1]))
            z.mul_(self._gate_rows[index])
            h = z[0]
            h.add_(self._const_rows[index])
            if index < last:
                self._activate(h, slopes[index])
                z[1:].mul_(slopes[index])
        return stacks[-1][0], stacks[-1][1:].permute(1, 0, 2)

    def _activate(self, h: Tensor, slope: Tensor) -> None:
        """In place: ``h <- act(h)`` and ``slope <- act'(h)``."""
        if self.activation is _tanh:
            h.tanh_()
            torch.addcmul(self._one, h, h, value=-1.0, out=slope)  # 1 - tanh^2
        else:
            value, derivative = self.activation(h)
            h.copy_(value)
            slope.copy_(derivative)


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
