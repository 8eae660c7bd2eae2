"""Forward-pass layers (notes: *Forward Pass*): normalization for convergence, regularization for
generalization. Layers are chosen by name through :data:`NORMS` and :data:`ACTIVATIONS`."""
from .activations import ACTIVATIONS, make_activation
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNormFunction
from .batchrenorm import BatchRenorm1d, BatchRenorm2d, BatchRenormFunction, FastBatchRenormFunction
from .fold import fold_batchnorm, fold_pair
from .fused import BatchNormAct1d, BatchNormAct2d, BatchNormActFunction
from .groupnorm import GroupNorm, GroupNormFunction, InstanceNorm2d, LayerNorm
from .normalization import NORMS, fuses_norm_activation, make_norm

__all__ = ["ACTIVATIONS", "BatchNorm1d", "BatchNorm2d", "BatchNormAct1d", "BatchNormAct2d", "BatchNormActFunction",
           "BatchNormFunction", "BatchRenorm1d", "BatchRenorm2d", "BatchRenormFunction", "FastBatchRenormFunction", "GroupNorm", "GroupNormFunction", "InstanceNorm2d",
           "LayerNorm", "NORMS", "fold_batchnorm", "fold_pair", "fuses_norm_activation", "make_activation",
           "make_norm"]
