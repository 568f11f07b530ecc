"""Error signals of learning rules other than backpropagation (needs torch).

- `fa`, feedback alignment (Lillicrap et al. 2016): the backward pass sends the error through
  fixed random matrices B instead of the transposed forward weights, in every linear and
  convolutional layer; every other operation passes the error as backpropagation does.
- `sign`, sign-symmetric feedback (Liao, Leibo & Poggio 2016): B = sign(W) · mean|W|, the
  forward weights' signs without their magnitudes.
- `dfa`, direct feedback alignment (Nøkland 2016): layer k receives the output error e (the
  gradient of the loss with respect to the network's output) through its own fixed random
  matrix, directly in the layer's pooled feature space: dfa_k = e · B_kᵀ; no backward pass
  through the network.

Feedback matrices are seeded by (seed, module name) or (seed, layer index) and generated when
an extraction starts; nothing is stored on disk. The rule `bp` (B = W) reproduces
backpropagation exactly and exists to test the machinery.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FEEDBACK_RULES", "FEEDBACK_SIGNALS", "dfa_matrix", "feedback_matrices", "use_feedback"]


def _generator(seed: int, name: str) -> torch.Generator:
    digest = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:7], "little")
    return torch.Generator().manual_seed(digest)


def _random_like(weight: torch.Tensor, seed: int, name: str) -> torch.Tensor:
    """Gaussian matrix of the weight's shape scaled to the weight's Frobenius norm."""
    b = torch.randn(weight.shape, generator=_generator(seed, name), dtype=torch.float32)
    return b * (weight.float().norm() / b.norm().clamp_min(1e-12))


def _sign_like(weight: torch.Tensor, seed: int, name: str) -> torch.Tensor:
    return torch.sign(weight.float()) * weight.float().abs().mean()


def _transpose(weight: torch.Tensor, seed: int, name: str) -> torch.Tensor:
    return weight.detach().clone()


# rule -> feedback matrix B of a layer from its forward weight W (the backward uses B where backprop uses W).
FEEDBACK_RULES: dict[str, Callable[[torch.Tensor, int, str], torch.Tensor]] = {
    "fa": _random_like,
    "sign": _sign_like,
    "bp": _transpose,
}
# Signals computed by a backward pass through feedback matrices.
FEEDBACK_SIGNALS = ("fa", "sign")


def _timm_conv2d_same() -> type | None:
    try:
        from timm.layers.conv2d_same import Conv2dSame
    except ImportError:
        return None
    return Conv2dSame


def _same_padding_forward(module: nn.Module, feedback: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """timm's Conv2dSame (TensorFlow 'SAME' padding, as in the tf_ EfficientNets): pad, then a feedback conv."""
    from timm.layers.padding import pad_same

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, module.weight.shape[-2:], module.stride, module.dilation)
        return _FeedbackConv2d.apply(
            x, module.weight, module.bias, feedback, module.stride, (0, 0), module.dilation, module.groups
        )

    return forward


def _feedback_forwards() -> dict[Callable, Callable]:
    """Stock forward function -> the feedback forward that replaces it (timm's SAME conv where timm exists)."""
    table: dict[Callable, Callable] = {nn.Linear.forward: _linear_forward, nn.Conv2d.forward: _conv_forward}
    same = _timm_conv2d_same()
    if same is not None:
        table[same.forward] = _same_padding_forward
    return table


def _feedback_forward_of(module: nn.Module) -> Callable | None:
    """How a module's forward is replaced by a feedback forward, or None when it cannot be (left as backprop)."""
    if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
        return None
    return _feedback_forwards().get(type(module).forward)


def _plain(module: nn.Module) -> bool:
    """Whether a Linear or Conv2d has a forward that a feedback forward can replace (stock, or timm's SAME conv)."""
    return _feedback_forward_of(module) is not None


def feedback_matrices(model: nn.Module, rule: str, seed: int) -> dict[str, torch.Tensor]:
    """Feedback matrix of every plain Linear and Conv2d of the model, on the weights' device."""
    if rule not in FEEDBACK_RULES:
        raise ValueError(f"feedback rule {rule!r} unknown; valid rules: {sorted(FEEDBACK_RULES)}")
    make = FEEDBACK_RULES[rule]
    return {
        name: make(m.weight.detach().cpu(), seed, name).to(m.weight.device)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and _plain(m)
    }


class _FeedbackLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback):
        ctx.save_for_backward(feedback)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        (feedback,) = ctx.saved_tensors
        return grad.matmul(feedback.to(grad.dtype)), None, None, None


class _FeedbackConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback, stride, padding, dilation, groups):
        ctx.save_for_backward(feedback)
        ctx.conf = (x.shape, stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (feedback,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conf
        grad_x = torch.nn.grad.conv2d_input(shape, feedback.to(grad.dtype), grad, stride, padding, dilation, groups)
        return grad_x, None, None, None, None, None, None, None


def _linear_forward(module: nn.Module, feedback: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: _FeedbackLinear.apply(x, module.weight, module.bias, feedback)


def _conv_forward(module: nn.Module, feedback: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: _FeedbackConv2d.apply(
        x, module.weight, module.bias, feedback, module.stride, module.padding, module.dilation, module.groups
    )


def _feedback_forward(module: nn.Module, feedback: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return _feedback_forward_of(module)(module, feedback)


@contextmanager
def use_feedback(model: nn.Module, matrices: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """Within the block, forward passes record backward passes through `matrices` (None: backprop)."""
    if not matrices:
        yield
        return
    modules = dict(model.named_modules())
    try:
        for name, feedback in matrices.items():
            modules[name].forward = _feedback_forward(modules[name], feedback)
        yield
    finally:
        for name in matrices:
            modules[name].__dict__.pop("forward", None)


def dfa_matrix(n_outputs: int, dim: int, seed: int, layer_index: int) -> torch.Tensor:
    """Layer k's direct feedback matrix (n_outputs, dim): N(0, 1/n_outputs) entries, seeded by (seed, k)."""
    g = _generator(seed, f"dfa/{layer_index}")
    return torch.randn(n_outputs, dim, generator=g, dtype=torch.float32) / n_outputs**0.5
