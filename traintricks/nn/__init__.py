"""Forward-pass layers (notes: *Forward Pass*): normalization for convergence, regularization for
generalization. Layers are chosen by name through :data:`NORMS` and :data:`ACTIVATIONS`."""
from .activations import ACTIVATIONS, make_activation
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormFunction
from .dropconnect import DropConnectConv2d, DropConnectLinear
from .dropout import Dropout, Dropout1d, Dropout2d, Dropout3d, DropoutFunction, dropout
from .batchrenorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, BatchRenormFunction, FastBatchRenormFunction
from .fold import fold_batchnorm, fold_pair
from .fused import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d, BatchNormActFunction
from .groupnorm import (GroupLayerNorm, GroupNorm, GroupNormFunction, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d,
                        LayerNorm)
from .noise import GaussianNoise, NoisyHardTanh
from .normalization import NORMS, fuses_norm_activation, make_norm
from .shake import ShakeDrop, ShakeDropFunction, ShakeShake, ShakeShakeFunction
from .sync_batchnorm import SyncBatchNormFunction, sync_batchnorm_
from .stochastic_depth import (StochasticDepth, StochasticDepthBranch, add_stochastic_depth, linear_survival,
                               remove_stochastic_depth, stochastic_depth)

__all__ = ["ACTIVATIONS", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormAct1d", "BatchNormAct2d",
           "BatchNormAct3d", "BatchNormActFunction", "BatchNormFunction", "BatchRenorm1d", "BatchRenorm2d",
           "BatchRenorm3d", "BatchRenormFunction", "FastBatchRenormFunction", "GroupLayerNorm", "GroupNorm",
           "GroupNormFunction", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
           "LayerNorm", "NORMS", "fold_batchnorm", "fold_pair", "fuses_norm_activation", "make_activation",
           "make_norm", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "DropoutFunction", "dropout", "DropConnectLinear", "DropConnectConv2d",
           "StochasticDepth", "StochasticDepthBranch", "add_stochastic_depth", "remove_stochastic_depth",
           "linear_survival", "stochastic_depth", "ShakeShake", "ShakeShakeFunction", "ShakeDrop", "ShakeDropFunction",
           "GaussianNoise", "NoisyHardTanh", "SyncBatchNormFunction", "sync_batchnorm_"]
