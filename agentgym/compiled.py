"""``torch.compile`` for the update's passes: the decoder layers of a Hugging Face causal LM,
compiled once, used only inside :meth:`CompiledLayers.active`.

Compiling a decoder layer fuses its element-wise work (norms, rotary embeddings, the MLP's gate,
the copies between them). That pays where the update is overhead-bound: 1.34-1.50x on the tiny
default model's update; on SmolLM2-135M at one CPU thread it measured 1.00x (docs/benchmarks.md,
"Attention counted, and compiled layers"). The layers of one model share one
compiled graph (the code of one layer class; their weights are inputs, not constants), and shapes
are compiled as dynamic, so the varying micro-batch widths of an update do not recompile.

Only training passes run compiled. Decoding keeps the eager layers: its key/value cache objects
and one-token steps are a different program, and a sampled rollout must not pay a compile for
each new length. The compiled forwards are set on the layers on entering :meth:`active` and
removed on leaving it, so outside it the model is the plain module: it deep-copies, pickles and
saves as before, and a copy made inside the context gets the compiled forward of the original,
which is why copies must be made outside it.

On a CPU, the compiler needs a C++ compiler (``g++``) at run time; the first update pays the
compile (tens of seconds for SmolLM2), later ones reuse it.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from typing import Any

__all__ = ["CompiledLayers", "decoder_layers"]


def decoder_layers(model: Any) -> list[Any]:
    """The decoder layers of ``model`` (peft and DDP wrappers included): the modules whose class
    name ends in ``DecoderLayer``, as every Hugging Face decoder-only model names them."""
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


class CompiledLayers:
    """Compiled forwards of ``model``'s decoder layers, active only inside :meth:`active`.

    Raises ``ValueError`` for a model with no decoder layers and ``RuntimeError`` on a CPU
    without a C++ compiler, each naming the fix."""

    def __init__(self, model: Any) -> None:
        import torch

        self.layers = decoder_layers(model)
        if not self.layers:
            raise ValueError(
                f"compile: {type(model).__name__} has no decoder layers (no module class named "
                "*DecoderLayer); run without --compile"
            )
        device = next(model.parameters()).device
        if device.type == "cpu" and shutil.which("g++") is None and shutil.which("c++") is None:
            raise RuntimeError(
                "compile: torch.compile on a CPU needs a C++ compiler and none is on PATH; "
                "install g++ (apt-get install g++) or run without --compile"
            )
        self.compiled = [torch.compile(layer.forward, dynamic=True) for layer in self.layers]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Run the layers compiled inside the block; eager again after it (even on error)."""
        for layer, fn in zip(self.layers, self.compiled):
            layer.forward = fn
        try:
            yield
        finally:
            for layer in self.layers:
                layer.__dict__.pop("forward", None)
