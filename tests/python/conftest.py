"""Shared helpers of the Python tests: random inputs in either layout, the reference's view of a BlockMap, and the
snapshots (files, modules) that show a refused call changed nothing."""

from __future__ import annotations

import os
import random
import sys
import tempfile
import zlib

# torch.compile's on-disk caches (inductor, FX graphs) are keyed without the sla ops' schemas: a cache written by an
# older build of the package calls its ops with the old arguments. Every test run compiles into a fresh directory
# of its own unless the caller chose one (set before torch is imported, which reads it at import).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="sla-test-inductor-"))

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

import sla  # noqa: E402

import reference  # noqa: E402

# Fresh random inputs on every run; SLA_TEST_SEED=<n> replays a run (the seed is printed in pytest's header).
SEED = int(os.environ.get("SLA_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"SLA_TEST_SEED={SEED}"


@pytest.fixture(autouse=True)
def seed_each_test(request):
    torch.manual_seed(SEED + zlib.crc32(request.node.nodeid.encode()))


def make_qkv(
    b, h, lq, lk, d, *, dv=None, dtype=torch.float64, device="cpu", layout="BHLD", requires_grad=False, seed=None
):
    """Random q, k, v (never zeros) in `layout`, leaf tensors; from torch's global RNG unless `seed` is given."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    dv = d if dv is None else dv

    def draw(length, dim):
        shape = (b, h, length, dim) if layout == "BHLD" else (b, length, h, dim)
        t = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        return t.requires_grad_(requires_grad)

    return draw(lq, d), draw(lk, d), draw(lk, dv)


def make_projection(dv, *, dtype=torch.float64, scale=0.3, requires_grad=False):
    """A random nonzero projection (W, b) of the linear branch."""
    w = (scale * torch.randn(dv, dv, dtype=torch.float64)).to(dtype).requires_grad_(requires_grad)
    b = (scale * torch.randn(dv, dtype=torch.float64)).to(dtype).requires_grad_(requires_grad)
    return w, b


def to_bhld(t, layout):
    return t if layout == "BHLD" else t.transpose(1, 2)


def masks_of(bmap: sla.BlockMap):
    """The reference's (critical, negligible) block masks of a library BlockMap."""
    critical = reference.mask_from_lut(bmap.lut.cpu(), bmap.count.cpu(), bmap.k_blocks)
    if bmap.negl_lut.shape[3] > 0:
        negligible = reference.mask_from_lut(bmap.negl_lut.cpu(), bmap.negl_count.cpu(), bmap.k_blocks)
    else:
        negligible = None
    return critical, negligible


def files_in(folder) -> dict:
    """name -> bytes of every file in `folder` (hidden temporary files included)."""
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


def module_state(module: torch.nn.Module) -> dict:
    """Everything a refused call must leave as it was: parameters (bitwise, with dtypes) and plain attributes."""
    out = {}
    for name, m in module.named_modules():
        attrs = {k: v for k, v in vars(m).items() if not k.startswith("_")}
        out[name] = (type(m), attrs, {k: (v.dtype, v.detach().clone()) for k, v in m.state_dict().items()})
    return out


def assert_unchanged(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for name in before:
        (t0, a0, s0), (t1, a1, s1) = before[name], after[name]
        assert t0 is t1 and a0 == a1, name
        assert s0.keys() == s1.keys(), name
        for key in s0:
            assert s0[key][0] == s1[key][0] and torch.equal(s0[key][1], s1[key][1]), f"{name}.{key}"


requires_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and sla.cuda_available()),
    reason="needs a CUDA device and the library's CUDA backend",
)
