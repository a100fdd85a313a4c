"""LoRA layers that train with one large matrix product per projection instead of three.

peft's LoRA ``Linear`` computes ``W x + s * B (A x)``: the frozen product, two rank-``r`` products
and two element-wise passes over the output, and in the backward pass two more rank-``r``
products laid out the slow way for a CPU GEMM (``g^T u`` contracts over the tokens with a
transposed operand; 5x slower than the same product computed as ``(u^T g)^T``, measured in
docs/benchmarks.md). For the long token batches of an update this overhead is a large share of
the time: the rank-``r`` products are memory-bound.

:func:`fuse_lora` switches peft's LoRA ``Linear`` layers of a model to :class:`FusedLoraLinear`
(same parameters, state dict, adapters and saving; only ``forward`` differs): when a batch has
enough rows for it to pay, the layer multiplies by the merged weight ``W + s B A`` (one
``out x r x in`` product, negligible next to the batch), and its backward pass computes

* ``dx = g (W + s B A)`` (the one large product the frozen weight needs anyway),
* ``dB = s (u^T g)^T`` with ``u = x A^T``, and ``dA = s (B^T g^T) x``,

with the transposes placed where the GEMM is fast. The result is the same LoRA function and the
same gradients (to float rounding); a layer that is not plain vanilla LoRA in the same dtype
(dropout, DoRA or another variant, a LoRA bias, several active adapters, a trainable or
non-``nn.Linear`` base layer, autocast, mixed-batch adapter names) keeps peft's own forward.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["fuse_lora", "FusedLoraLinear"]  # noqa: F822 (built on first use)


def _merged(weight: Any, a: Any, b: Any, scaling: float) -> Any:
    import torch

    return torch.addmm(weight, b, a, alpha=scaling)  # W + s B A


def _function() -> Any:
    import torch
    import torch.nn.functional as F

    class MergedLoRA(torch.autograd.Function):
        """``F.linear(x, W + s B A, bias)`` with the gradients of ``x``, ``A`` and ``B``."""

        @staticmethod
        def forward(
            ctx: Any, x: Any, weight: Any, bias: Any, a: Any, b: Any, scaling: float
        ) -> Any:
            ctx.save_for_backward(x, weight, a, b)
            ctx.scaling = scaling
            return F.linear(x, _merged(weight, a, b, scaling), bias)

        @staticmethod
        def backward(ctx: Any, g: Any) -> tuple[Any, ...]:
            x, weight, a, b = ctx.saved_tensors
            s = ctx.scaling
            need_x, _, _, need_a, need_b, _ = ctx.needs_input_grad
            gx = ga = gb = None
            if need_x:
                gx = g @ _merged(weight, a, b, s)
            g2 = g.reshape(-1, g.shape[-1])
            x2 = x.reshape(-1, x.shape[-1])
            if need_b:
                u = (x2 @ a.t()).mul_(s)  # tokens x r
                gb = (u.t() @ g2).t()  # out x r, as (u^T g)^T: the fast layout
            if need_a:
                vt = (b.t() @ g2.t()).mul_(s)  # r x tokens, as B^T g^T: the fast layout
                ga = vt @ x2  # r x in
            return gx, None, None, ga, gb, None

    return MergedLoRA


@functools.cache
def _fused_class() -> Any:
    """:class:`FusedLoraLinear`, built on first use (peft is an optional dependency)."""
    import torch
    import torch.nn.functional as F
    from peft.tuners.lora.layer import Linear

    merged_lora = _function()

    class FusedLoraLinear(Linear):  # type: ignore[misc,valid-type]
        """peft's LoRA ``Linear`` with a merged-weight forward and a layout-aware backward."""

        def _fusable(self, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args or kwargs or self.disable_adapters or self.merged:
                return None
            active = [n for n in self.active_adapters if n in self.lora_A]
            if len(active) != 1 or active[0] in getattr(self, "lora_variant", {}):
                return None
            name = active[0]
            base, a, b = self.base_layer, self.lora_A[name], self.lora_B[name]
            if (
                type(base) is not torch.nn.Linear
                or base.weight.requires_grad
                or (base.bias is not None and base.bias.requires_grad)
                or b.bias is not None
                or not isinstance(self.lora_dropout[name], torch.nn.Identity)
                or torch.is_autocast_enabled(x.device.type)
                or not (x.dtype == base.weight.dtype == a.weight.dtype == b.weight.dtype)
            ):
                return None
            rows = x.numel() // max(1, x.shape[-1])
            n_in, n_out = base.in_features, base.out_features
            if rows * (n_in + n_out) < n_in * n_out:  # merging costs more than it saves
                return None
            return base.weight, base.bias, a.weight, b.weight, float(self.scaling[name])

        def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
            plan = self._fusable(x, args, kwargs)
            if plan is None:
                return super().forward(x, *args, **kwargs)
            weight, bias, a, b, s = plan
            if torch.is_grad_enabled() and (x.requires_grad or a.requires_grad or b.requires_grad):
                return merged_lora.apply(x, weight, bias, a, b, s)
            return F.linear(x, _merged(weight, a, b, s), bias)

    FusedLoraLinear.__module__ = __name__
    FusedLoraLinear.__qualname__ = "FusedLoraLinear"  # picklable: agentgym.lora.FusedLoraLinear
    return FusedLoraLinear


def __getattr__(name: str) -> Any:
    if name == "FusedLoraLinear":
        return _fused_class()
    raise AttributeError(name)


def fuse_lora(model: Any) -> int:
    """Switch ``model``'s peft LoRA ``Linear`` layers to :class:`FusedLoraLinear` in place (the
    same objects and parameters; deepcopy, ``save_pretrained``, ``merge_and_unload`` and
    ``disable_adapter`` behave as before); returns how many layers were switched."""
    from peft.tuners.lora.layer import Linear

    cls = _fused_class()
    n = 0
    for module in model.modules():
        if type(module) is Linear:
            module.__class__ = cls
            n += 1
    return n
