"""Data: datasets as in-memory tensors, batching and augmentation on tensors."""
from .augment import AUGMENTATIONS, Compose, RandomCrop, RandomFlip, as_spec
from .datasets import DATASETS, DataSplits, RawData, load_data
from .idx import DataError, read_idx
from .curriculum import CURRICULA, CurriculumLoader, Pacing
from .loader import TensorLoader

__all__ = ["CURRICULA", "CurriculumLoader", "Pacing", "AUGMENTATIONS", "Compose", "RandomCrop", "RandomFlip", "as_spec", "DATASETS", "DataSplits", "RawData",
           "load_data", "DataError", "read_idx", "TensorLoader"]
