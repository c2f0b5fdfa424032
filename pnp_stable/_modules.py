"""Using a caller's ``torch.nn.Module`` or callable without changing it: evaluation mode for a run, a copy on another
device, a one-argument denoiser called as ``denoiser(x, sigma)``."""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from typing import Callable

import torch
from torch import Tensor


class SigmaFreeModule(torch.nn.Module):
    """A module whose ``forward`` takes only ``x`` (a plain ``nn.Sequential``) as a denoiser ``D(x, sigma) = module(x)``;
    still a module, so evaluation mode, device moves and tiling reach the caller's layers. It carries no
    certificate: the caller's module is not one of pnp-stable's certified denoisers."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor, sigma=None) -> Tensor:
        return self.module(x)


def with_sigma_argument(denoiser) -> Callable[[Tensor, Tensor | float], Tensor]:
    """``denoiser`` as a function of ``(x, sigma)``: as it is when it takes both; a callable or module whose call
    takes one positional argument (``denoiser(x)``, a plain ``nn.Sequential``) is called without ``sigma``."""
    if isinstance(denoiser, str):
        raise ValueError(f"denoiser must be callable, got the name {denoiser!r}: load it with "
                         f"pnp_stable.load_denoiser({denoiser!r}) (ps.deblur and ps.denoise take names directly)")
    if not callable(denoiser):
        raise ValueError(f"denoiser must be callable, got {type(denoiser).__name__}")
    try:  # a module's call signature is its forward's
        signature = inspect.signature(denoiser.forward if isinstance(denoiser, torch.nn.Module) else denoiser)
    except (TypeError, ValueError):
        return denoiser
    positional = [p for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    if len(positional) == 1 and positional[0].kind != inspect.Parameter.VAR_POSITIONAL:
        return SigmaFreeModule(denoiser) if isinstance(denoiser, torch.nn.Module) else lambda x, sigma: denoiser(x)
    return denoiser


@contextmanager
def evaluation_mode(denoiser):
    """Run ``denoiser`` in eval mode (certificates describe it; BatchNorm and dropout must be frozen) and
    give back each submodule's own ``training`` flag afterwards. Anything but a module passes through."""
    if not isinstance(denoiser, torch.nn.Module):
        yield denoiser
        return
    flags = [(module, module.training) for module in denoiser.modules()]
    denoiser.eval()
    try:
        yield denoiser
    finally:
        for module, training in flags:
            module.training = training


def device_of(model) -> torch.device:
    """Where a module computes: the device of its first parameter or buffer; the CPU for anything else (a plain
    callable, a module without tensors)."""
    if isinstance(model, torch.nn.Module):
        for tensor in [*model.parameters(), *model.buffers()]:
            return tensor.device
    return torch.device("cpu")


def same_device(a: str | torch.device, b: str | torch.device) -> bool:
    """Whether two devices are one: the same type, and the same index where both name one ('cuda' is any GPU's)."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def on_device(model: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """``model`` itself when its parameters and buffers are already on ``device``, else a copy moved there,
    so that the caller's model stays where it was."""
    same = all(same_device(t.device, device) for t in [*model.parameters(), *model.buffers()])
    return model if same else copy.deepcopy(model).to(device)


def accepted_channels(model) -> tuple[int, ...] | None:
    """The image channel counts ``model`` takes: its recorded ``channels`` (ours and the baselines), else, for one of
    deepinv's own models (DnCNN, DRUNet, …), whose first convolution is its input layer, that convolution's input
    channels c, taken as c or c − 1 images (a noise-level map may join the image, as DRUNet's does); None when
    nothing tells (a caller's own module may apply a one-channel network to each channel, say)."""
    recorded = getattr(model, "channels", None)
    if isinstance(recorded, int):
        return (recorded,)
    if isinstance(model, torch.nn.Module) and type(model).__module__.startswith("deepinv."):
        first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        if first is not None:
            return tuple(c for c in (first.in_channels, first.in_channels - 1) if c > 0)
    return None
