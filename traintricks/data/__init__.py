"""Data: datasets as in-memory tensors, batching and augmentation on tensors."""
from .augment import AUGMENTATIONS, AlternatingFlip, Compose, RandomCrop, RandomFlip, as_spec
from .policies import AugMix, AutoAugment, RandAugment, TrivialAugment
from .datasets import DATASETS, DataSplits, RawData, data_from_config, load_data
from . import sources  # noqa: F401  (registers the user-data sources: arrays, csv, python)
from . import cifar  # noqa: F401  (registers cifar10, cifar100: the official binary release)
from .idx import DataError, read_idx
from .curriculum import CURRICULA, CurriculumLoader, Pacing
from .loader import TensorLoader

__all__ = ["CURRICULA", "CurriculumLoader", "Pacing", "AUGMENTATIONS", "AugMix", "AutoAugment", "RandAugment", "TrivialAugment", "AlternatingFlip", "Compose", "RandomCrop", "RandomFlip", "as_spec", "DATASETS", "DataSplits", "RawData",
           "load_data", "data_from_config", "DataError", "read_idx", "TensorLoader"]
