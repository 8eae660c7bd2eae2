"""Forward-pass layers (notes: *Forward Pass*): normalization for convergence, regularization for
generalization. Layers are chosen by name through :data:`NORMS` and :data:`ACTIVATIONS`."""
from .activations import ACTIVATIONS, make_activation
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNormFunction
from .fold import fold_batchnorm, fold_pair
from .normalization import NORMS, make_norm

__all__ = ["ACTIVATIONS", "BatchNorm1d", "BatchNorm2d", "BatchNormFunction", "NORMS", "fold_batchnorm", "fold_pair",
           "make_activation", "make_norm"]
