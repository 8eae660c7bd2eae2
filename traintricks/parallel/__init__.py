"""Weight update, parallel (notes: *Weight Update*): synchronous data parallel on ``torch.distributed``.

``traintricks train`` launched by ``torchrun --nproc_per_node=K`` (or any launcher setting ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) trains with DistributedDataParallel: gloo on CPU, NCCL on GPU.
The config's ``batch_size`` is the *global* batch; each of the K processes takes its ``batch_size / K`` share of
every global batch of one shared, seeded permutation, DDP averages the gradients, so K processes with batch
B/K compute the same update as one process with batch B (tested); batch norm normalizes per process unless
``parallel.sync_batchnorm = true`` (:mod:`traintricks.nn.sync_batchnorm`), which makes it exact for batch norm
too. Metrics are reduced across processes; only (global) rank 0 writes files. Across machines: one ``torchrun --nnodes=M`` agent per machine with a
c10d rendezvous (docs/weight_update.md, "Multiple machines"; tested on loopback).
"""
from .ddp import DistInfo, cleanup, dist_info, gather_object, setup_distributed
from ..nn.sync_batchnorm import SyncBatchNormFunction, sync_batchnorm_

__all__ = ["DistInfo", "SyncBatchNormFunction", "cleanup", "dist_info", "gather_object", "setup_distributed",
           "sync_batchnorm_"]
