"""Models chosen by name through :data:`MODELS`.

Every model takes ``(in_shape, num_classes, **options)`` where ``in_shape`` is one example's
shape (``(C, H, W)`` images or ``(C, L)`` signals) and the options include the normalization layer
and activation by name, so that later techniques plug in.

A name with a colon is the user's own model: ``"pkg.module:factory"`` (or ``"timm:<model>"``), imported when
looked up (:mod:`traintricks.models.imported`).
"""
from __future__ import annotations



from .imported import ModelImportError, ModelRegistry, import_entry, is_import_path
from .cnn import SmallCNN
from .common import zero_init_residual
from .mlp import MLP
from .resnet import PreActBlock, PreActBottleneck, PreActResNet
from .revnet import RevNet

MODELS = ModelRegistry("model", section="models")


# each model class bound once with its summary; its constructor's arguments after (in_shape, num_classes) are the
# options, with its defaults
MODELS.register("cnn", SmallCNN, summary="Small fast CNN: stages of conv3x3-norm-act separated by max pooling, global "
                "max pool (the default recipe's model); pool_before_norm pools right after each stage's last conv.")
MODELS.register("preact_resnet", PreActResNet, summary="Pre-activation ResNet v2 with bottleneck (or basic) blocks, "
                "configurable stages/blocks/widths (1603.05027); optional auxiliary heads after chosen stages.")
MODELS.register("revnet", RevNet, summary="Reversible ResNet (RevNet): block inputs reconstructed in backward, memory "
                "flat in depth (1707.04585).")
MODELS.register("mlp", MLP, summary="Multi-layer perceptron: Linear-norm-act layers on the flattened input.")


from .regularizers import REGULARIZERS  # noqa: E402

__all__ = ["MODELS", "ModelImportError", "import_entry", "is_import_path", "REGULARIZERS", "RevNet", "SmallCNN", "MLP", "PreActResNet", "PreActBlock", "PreActBottleneck", "zero_init_residual"]
