"""Hierarchical loss over a class tree (Wu, Tygert & LeCun 2017, "A hierarchical loss and its problems when
classifying non-hierarchically", arXiv:1709.01062).

The classes are the leaves of a tree given as parent indices: nodes ``0..K-1`` are the classes, nodes
``K..`` internal, ``parents[i]`` is node ``i``'s parent and ``-1`` marks the root. A node's probability is
the total predicted probability of the classes below it, ``P(a) = sum_{leaves l under a} p_l``. The loss
of an example of class ``y`` sums, over the nodes ``a`` on the path from ``y`` up to (not including) the
root, the negative log-probability of that node, with weights ``w_a`` (default: all 1, normalized by the
path length):

    L = -(1 / |path(y)|) * sum_{a in path(y)} w_a * log P(a)

Confusing two classes that share a parent costs less than confusing distant ones: the shared
ancestors' probabilities stay high. With a flat tree (every class a child of the root) it is plain
cross-entropy.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .classification import _reduce, check_logits_target, check_reduction, class_index_target


def tree_matrices(parents: Sequence[int], num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``below`` (nodes x K: 1 where class k is under node a, itself included) and ``path`` (K x nodes:
    1 where node a is on class k's path to the root, root excluded)."""
    n = len(parents)
    if n < num_classes:
        raise ValueError(f"the tree has {n} nodes but there are {num_classes} classes (nodes 0..K-1 are the classes)")
    roots = [i for i, p in enumerate(parents) if p == -1]
    if len(roots) != 1:
        raise ValueError(f"the tree must have exactly one root (parent -1), found {len(roots)}")
    below = torch.zeros(n, num_classes)
    path = torch.zeros(num_classes, n)
    for k in range(num_classes):
        node, seen = k, set()
        while parents[node] != -1:
            if node in seen or not -1 <= parents[node] < n:
                raise ValueError(f"parents do not form a tree (at node {node})")
            seen.add(node)
            below[node, k] = 1
            path[k, node] = 1
            node = parents[node]
    if any(parents[i] != -1 and below[i].sum() == 0 for i in range(num_classes, n)):
        raise ValueError("an internal node has no class below it")
    return below, path


class HierarchicalLoss(nn.Module):
    """See the module docstring. ``parents`` lists each node's parent; ``weights`` (optional) one per node.

    Shapes: logits (N, K), targets class indices (N,) of any integer dtype or probabilities (N, K). Computed in
    at least float32, returned in the logits' dtype. ``validate=True`` checks label ranges and finite logits
    (a host synchronization); without it an out-of-range label raises PyTorch's ``IndexError``."""

    def __init__(self, parents: Sequence[int], num_classes: int, weights: Sequence[float] | None = None,
                 reduction: str = "mean", *, validate: bool = False) -> None:
        super().__init__()
        below, path = tree_matrices(list(parents), num_classes)
        w = torch.ones(len(parents)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if w.shape != (len(parents),):
            raise ValueError(f"weights: one per node ({len(parents)}), got {tuple(w.shape)}")
        self.register_buffer("below", below)
        self.register_buffer("path", path * w / path.sum(1, keepdim=True))
        self.num_classes, self.reduction = num_classes, check_reduction("HierarchicalLoss", reduction)
        self.validate = bool(validate)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_logits_target("HierarchicalLoss", logits, target, validate=self.validate, min_ndim=2, max_ndim=2)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"HierarchicalLoss: tree has {self.num_classes} classes, logits {logits.shape[1]}")
        work = torch.promote_types(logits.dtype, torch.float32)           # float16/bfloat16: sums of small p in fp32
        p = torch.softmax(logits.to(work), dim=1)                                 # (N, K)
        # log P(a), P(a) = sum of the class probabilities below a (clamped: the root row is empty and
        # has weight 0; a tiny floor keeps log and its gradient finite)
        log_node = (p @ self.below.to(work).T).clamp_min(1e-30).log()           # (N, nodes)
        path = self.path.to(work)
        weights = path[class_index_target("HierarchicalLoss", target).long()] if not target.is_floating_point() \
            else target.to(work) @ path
        return _reduce(-(weights * log_node).sum(1), self.reduction).to(logits.dtype)
