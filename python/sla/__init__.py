"""SLA: Sparse-Linear Attention (arXiv 2509.24006) for PyTorch.

    import sla
    attn = sla.SparseLinearAttention(head_dim=128, topk=0.05)
    o = attn(q, k, v)                                   # (B, H, L, D)
    o = sla.sparse_linear_attention(q, k, v, topk=0.05)  # functional form

The ops are torch.ops.sla.{block_map, invert_block_map, forward, backward}; see docs/PYTHON.md.
"""

import torch  # noqa: F401  (loads libtorch before the extension that links it)

from . import (  # noqa: F401  (register the autograd formula and the fake kernels)
    _C,  # registers torch.ops.sla.*
    _autograd,
    _fake,
    atomic,  # sla.atomic: output files written whole or not at all (used by the examples and benchmarks)
    distributed,  # noqa: E402, F401  (sla.distributed: Ulysses sequence parallelism)
    tiling,
)
from .blockmap import BlockMap, block_map, check_block_map
from .calibration import apply_rules, calibrate, load_rules, record
from .functional import sparse_linear_attention
from .module import SparseLinearAttention
from .rules import BlockRule

__version__ = "0.1.0"

build_info = _C.build_info
cuda_available = _C.cuda_available

__all__ = [
    "BlockMap",
    "BlockRule",
    "apply_rules",
    "atomic",
    "calibrate",
    "load_rules",
    "record",
    "tiling",
    "SparseLinearAttention",
    "block_map",
    "build_info",
    "check_block_map",
    "cuda_available",
    "sparse_linear_attention",
]
