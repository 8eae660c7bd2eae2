"""Surgery on any ``nn.Module``: the notes' techniques applied to a model nobody here wrote, in one call each.

Every surgery changes the model **in place** (module paths and the ``state_dict`` keys of what it keeps stay as
they were) and returns a :class:`SurgeryReport` of what it changed and what it passed over and why; one that finds
nothing to change raises :class:`NothingToChangeError` naming what it looked for. Modules are chosen by a selector
(:mod:`traintricks.surgery.select`): a class, a name pattern, ``"type:<Class>"``, ``"last:..."`` or a callable.

The same surgeries are config keys for any model, built-in or imported: ``model.norm``, ``model.regularization``,
``model.checkpoint``, ``model.fold_for_eval``.
"""
from __future__ import annotations

from .report import NothingToChangeError, SurgeryReport
from .select import Selector, describe, select

__all__ = ["NothingToChangeError", "Selector", "SurgeryReport", "describe", "select"]

# residual branches and regularizers by selector
from .residual import (ResidualAdd, add_shakedrop, add_stochastic_depth, find_residual_additions,  # noqa: E402
                       zero_init_residual)
from .regularize import add_dropconnect, add_dropout, add_noise  # noqa: E402

__all__ += ["ResidualAdd", "add_shakedrop", "add_stochastic_depth", "find_residual_additions", "zero_init_residual",
            "add_dropconnect", "add_dropout", "add_noise"]

# norms, folding, In-Place ABN, synchronized BN, checkpointing
from .checkpointing import (CheckpointedModule, checkpoint, checkpoint_blocks, find_chain,  # noqa: E402
                            remove_checkpointing)
from .folding import fold_batchnorm  # noqa: E402
from .norms import convert_norms, sync_batchnorm, to_inplace_abn  # noqa: E402

__all__ += ["CheckpointedModule", "checkpoint", "checkpoint_blocks", "convert_norms", "find_chain", "fold_batchnorm",
            "remove_checkpointing", "sync_batchnorm", "to_inplace_abn"]
