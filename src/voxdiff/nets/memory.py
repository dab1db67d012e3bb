"""Deterministic activation-memory measurement: the bytes autograd keeps for backward."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn


def saved_bytes(run: Callable[[], Any], parameters: Iterable[torch.Tensor] = (), *,
                include_parameters: bool = False) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``run()`` executes.

    Counted with ``torch.autograd.graph.saved_tensors_hooks``: every tensor saved for backward
    (by built-in ops and by custom ``autograd.Function``s) is recorded by its storage, so views
    and tensors saved twice count once, and a saved view counts its whole storage (that is what
    it keeps alive). ``parameters`` are left out unless ``include_parameters``; their low-precision
    copies under autocast are counted. Unlike peak RSS this does not depend on the allocator, so
    it compares memory-saving settings exactly. The graph is discarded; no backward runs.
    """
    param_storages = {p.untyped_storage().data_ptr() for p in parameters}
    sizes: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if include_parameters or key not in param_storages:
            sizes[key] = storage.nbytes()
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = run()
    del out
    return sum(sizes.values())


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, t: torch.Tensor | float | None = None, *,
                           include_parameters: bool = False, **kwargs) -> int:
    """:func:`saved_bytes` of one ``model(x, t, **kwargs)`` forward (the model's parameters excluded)."""
    return saved_bytes(lambda: model(x, t, **kwargs), model.parameters(), include_parameters=include_parameters)
