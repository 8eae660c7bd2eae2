"""Backward pass (notes: *Backward Pass*): trading computation for the memory saved for backward.

| file | what |
|---|---|
| ``recomputation.py`` | :func:`checkpoint_sequential`, :func:`plan_checkpoints`, :class:`CheckpointedSequential`, :class:`ForwardState` |
| ``inplace_abn.py`` | :class:`InPlaceABN` (BN + leaky ReLU storing only its output) |
| ``reversible.py`` | :class:`ReversibleBlock`, :class:`ReversibleSequence` (RevNet) |
| ``measure.py`` | :func:`saved_bytes`: bytes saved for backward by a forward pass |
"""
from .recomputation import (CheckpointedSequential, CheckpointPlan, ForwardState, LayerCost, checkpoint_sequential,
                            evaluate_plan, measure_layers, plan_checkpoints, recompute, uniform_segments)
from .inplace_abn import InPlaceABN, InPlaceABN1d, InPlaceABNFunction
from .measure import saved_bytes
from .reversible import ReversibleBlock, ReversibleSequence

__all__ = ["InPlaceABN", "InPlaceABN1d", "InPlaceABNFunction", "ReversibleBlock", "ReversibleSequence",
           "CheckpointedSequential", "CheckpointPlan", "ForwardState", "LayerCost", "checkpoint_sequential",
           "evaluate_plan", "measure_layers", "uniform_segments", "plan_checkpoints", "recompute", "saved_bytes"]
