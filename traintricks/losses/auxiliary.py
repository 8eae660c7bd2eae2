"""Auxiliary heads (deep supervision; Lee et al. 2015, arXiv:1409.5185; Szegedy et al. 2015): extra
classifiers on earlier features whose losses are added, with weights, to the main loss in training,

    L = L_main(z, y) + sum_i w_i * L_main(z_i, y)

and which are not computed at inference. A model supports them by putting the auxiliary logits of its
last training forward pass in ``model.aux_logits`` (``preact_resnet`` does, with ``aux_heads=[stages]``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class AuxiliaryHeads(nn.Module):
    """The main loss plus ``weights[i]`` times the same loss on ``model.aux_logits[i]`` (training only)."""

    def __init__(self, loss: nn.Module, model: nn.Module, weights: Sequence[float] | float = 0.3) -> None:
        super().__init__()
        self.loss, self._model = loss, [model]          # a list: the model is not this loss's submodule
        self.weights = weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = self.loss(logits, target)
        aux = getattr(self._model[0], "aux_logits", None) or []
        if not self.training or not aux or aux[0].shape[0] != logits.shape[0]:
            return total
        w = [self.weights] * len(aux) if isinstance(self.weights, (int, float)) else list(self.weights)
        if len(w) != len(aux):
            raise ValueError(f"AuxiliaryHeads: {len(w)} weights for {len(aux)} auxiliary heads")
        for wi, z in zip(w, aux):
            total = total + wi * self.loss(z, target)
        return total
