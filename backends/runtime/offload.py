"""Moving one module's weights between the CPU and the device without copying anything back.

Inference never changes weights, so each parameter and buffer keeps a CPU copy for the module's
whole life (pinned when RAM allows). Putting the module on the device is one host-to-device copy per
tensor; taking it off just points every tensor back at its CPU copy and lets the device copy go.
Measured on an H100: pinned host to device 55 GB/s, device to fresh pageable memory 1.5 GB/s, so a
copy back would cost ~35x more than the copy up.
"""

from __future__ import annotations

import logging
from typing import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)


def module_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in _tensors(module):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def _tensors(module: nn.Module, recurse: bool = True) -> Iterator[torch.Tensor]:
    yield from module.parameters(recurse=recurse)
    yield from module.buffers(recurse=recurse)


class TensorHome:
    """Keeps a module's CPU copies and swaps its tensors between them and the device."""

    def __init__(self, module: nn.Module, pin: bool) -> None:
        """Record CPU copies of every tensor; ``pin`` page-locks them (needs CUDA and spare RAM).

        Pinning costs one host copy at load time and makes every later upload ~3x faster.
        """
        self.module = module
        self._homes: dict[int, torch.Tensor] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        for tensor in _tensors(module):
            if id(tensor) in self._homes:
                continue
            home = tensor.data if tensor.device.type == "cpu" else tensor.data.cpu()
            if pin and not home.is_pinned():
                home = home.pin_memory()
            tensor.data = home
            self._homes[id(tensor)] = home

    @property
    def streaming(self) -> bool:
        """Whether block streaming hooks are installed."""
        return bool(self._hooks)

    def to_device(self, device: torch.device) -> None:
        """Upload every tensor; on any failure (OOM included) everything is pointed home again."""
        if device.type == "cpu":
            return
        try:
            for tensor in _tensors(self.module):
                if tensor.device != device:
                    tensor.data = self._homes[id(tensor)].to(device, non_blocking=True)
            torch.cuda.synchronize(device)
        except BaseException:
            self.to_home()
            raise

    def to_home(self) -> None:
        """Point every tensor at its CPU copy; device copies are freed when unreferenced."""
        self.stop_streaming()
        for tensor in _tensors(self.module):
            home = self._homes.get(id(tensor))
            if home is not None and tensor.data is not home:
                tensor.data = home

    def largest_block_bytes(self) -> int:
        """Bytes of the biggest single submodule's own tensors: the floor of streaming mode."""
        biggest = 0
        for sub in self.module.modules():
            size = sum(t.numel() * t.element_size() for t in _tensors(sub, recurse=False))
            biggest = max(biggest, size)
        return biggest

    def start_streaming(self, device: torch.device) -> None:
        """Sequential offload: each submodule uploads its own tensors just before its forward.

        The weights go home right after the forward, so the device holds one block at a time
        (plus activations). Slow, but it runs models larger than the card.
        """
        if self._hooks:
            return
        for sub in self.module.modules():
            own = list(_tensors(sub, recurse=False))
            if not own:
                continue

            def upload(mod: nn.Module, args: object, own: list[torch.Tensor] = own) -> None:
                for tensor in own:
                    if tensor.device != device:
                        tensor.data = self._homes[id(tensor)].to(device, non_blocking=True)

            def release(mod: nn.Module, args: object, output: object, own: list[torch.Tensor] = own) -> None:
                for tensor in own:
                    tensor.data = self._homes[id(tensor)]

            self._hooks.append(sub.register_forward_pre_hook(upload))
            self._hooks.append(sub.register_forward_hook(release))

    def stop_streaming(self) -> None:
        """Remove the streaming hooks (tensors are left where they are)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
