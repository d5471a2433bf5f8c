"""Finding a model's repeated blocks (transformer layers, residual stages)."""

from __future__ import annotations

from collections import Counter

from torch import nn


def find_repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of ``model``: the children of a ModuleList (a stack of layers, which may
    hold only one) and the children of a Sequential whose class occurs at least twice in it,
    each with parameters. Blocks nested inside an earlier-found block are skipped, so a
    transformer's layers are returned, not the linear layers inside them."""
    blocks: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside or not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        counts = Counter(type(child) for child in module.children())
        least = 1 if isinstance(module, nn.ModuleList) else 2
        for child in module.children():
            if counts[type(child)] >= least and len(list(child.parameters())) > 0:
                blocks.append(child)
                inside.update(id(m) for m in child.modules())
    return blocks
