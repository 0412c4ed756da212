"""Inputs that used to give silent garbage on the CPU backend: non-finite values (must propagate as in dense
attention), forward-mode AD and double backward (must raise), mixed devices (must raise, in the real ops and the
fake ones), malformed caller block maps (must raise, naming the table, the row and the value) and option values
whose messages did not name the argument. test_cuda_bad_values.py asserts the same on the GPU."""

from __future__ import annotations

import math

import pytest
import torch

import sla

from conftest import make_projection, make_qkv


def dense_attention(q, k, v, scale=None):
    s = (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale) * q @ k.transpose(-1, -2)
    return torch.softmax(s, dim=-1) @ v


# ---- non-finite inputs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["global", "complement"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_non_finite_input_propagates_like_dense_attention(variant, value, where):
    # topk = 1 and W = b = 0: O equals dense attention (docs/SPEC.md 7.1), so it must be NaN exactly where dense is.
    q, k, v = make_qkv(1, 2, 150, 150, 16)
    t = {"q": q, "k": k, "v": v}[where]
    t[0, 0, 5, 3] = value
    o = sla.sparse_linear_attention(q, k, v, topk=1.0, variant=variant)
    ref = dense_attention(q, k, v)
    assert not torch.isfinite(ref).all(), "the case must make dense attention non-finite"
    assert torch.equal(torch.isnan(o), torch.isnan(ref))
    assert torch.equal(torch.isinf(o), torch.isinf(ref)) and torch.equal(o[torch.isinf(o)], ref[torch.isinf(ref)])
    finite = torch.isfinite(ref)
    torch.testing.assert_close(o[finite], ref[finite], rtol=1e-10, atol=1e-10)


def test_reported_case_nan_in_q_is_not_zero():
    q, k, v = make_qkv(1, 2, 150, 150, 16)
    q[0, 0, 5, 3] = float("nan")
    row = sla.sparse_linear_attention(q, k, v, topk=1.0)[0, 0, 5]
    assert torch.isnan(row).all()


@pytest.mark.parametrize("variant", ["global", "complement"])
@pytest.mark.parametrize("feature_map", ["softmax", "elu", "relu"])
def test_non_finite_input_reaches_the_linear_branch(variant, feature_map):
    # With a projection the linear branch reaches O: a NaN in q makes its row NaN (never 0), other rows stay finite.
    q, k, v = make_qkv(1, 1, 200, 200, 16)
    w, b = make_projection(16)
    q[0, 0, 7, 2] = float("nan")
    o = sla.sparse_linear_attention(
        q, k, v, topk=0.5, variant=variant, feature_map=feature_map, proj_weight=w, proj_bias=b
    )
    assert torch.isnan(o[0, 0, 7]).all()
    others = torch.cat([o[0, 0, :7], o[0, 0, 8:]])
    assert torch.isfinite(others).all()


@pytest.mark.parametrize("variant", ["global", "complement"])
def test_non_finite_input_propagates_through_backward(variant):
    q, k, v = make_qkv(1, 2, 150, 150, 16, requires_grad=True)
    w, b = make_projection(16, requires_grad=True)
    with torch.no_grad():
        q[0, 0, 5, 3] = float("nan")
    o = sla.sparse_linear_attention(q, k, v, topk=1.0, variant=variant, proj_weight=w, proj_bias=b)
    o.sum().backward()
    # Dense attention's gradients with the same NaN: the NaN pattern of dQ, dK, dV must match (never zeros).
    qd, kd, vd = (t.detach().clone().requires_grad_() for t in (q, k, v))
    dense_attention(qd, kd, vd).sum().backward()
    assert torch.isnan(q.grad[0, 0, 5]).all()
    assert torch.equal(torch.isnan(q.grad[:, 1]), torch.isnan(qd.grad[:, 1]))  # head 1: no NaN at all
    assert torch.isnan(k.grad[0, 0]).any() and torch.isnan(v.grad[0, 0]).any()
    assert torch.isfinite(k.grad[0, 1]).all() and torch.isfinite(v.grad[0, 1]).all()
    if variant == "global":
        assert torch.isnan(w.grad).any()  # dW sums O_l, and row 5's O_l is NaN
    else:
        assert torch.equal(w.grad, torch.zeros_like(w.grad))  # topk = 1: O_l is exactly 0 (no marginal block)


def test_empty_row_is_still_zero():
    # The legitimate guard stays: a LUT row with count 0 has no key, so O_s is 0 (and the LSE -inf).
    q, k, v = make_qkv(1, 1, 128, 128, 16)
    lut = torch.tensor([[[[0], [1]]]], dtype=torch.int32)
    count = torch.tensor([[[1, 0]]], dtype=torch.int32)
    bmap = sla.BlockMap.from_lut(lut, count=count, k_blocks=2, block_q=64, block_k=64)
    o = sla.sparse_linear_attention(q, k, v, topk=0.5, block_map=bmap)
    assert torch.equal(o[0, 0, 64:], torch.zeros_like(o[0, 0, 64:]))
    assert torch.isfinite(o).all()


def test_complement_empty_marginal_is_still_zero_even_with_nan_in_k():
    # topk = 1 in the complement variant: M_i is empty, O_l is exactly 0 by definition (docs/SPEC.md 3); a NaN key does
    # reach O through the sparse branch, but the linear branch adds a true zero, not NaN from an empty sum.
    q, k, v = make_qkv(1, 1, 128, 128, 16)
    w, b = make_projection(16)
    k[0, 0, 3, 1] = float("nan")
    tables = sla.block_map(q, k, topk=1.0, variant="complement").tables()
    o, _, o_lin, _, _, _ = torch.ops.sla.forward(
        q, k, v, w, b, *tables, 64, 64, "complement", "softmax", 0.0, 1e-5, True
    )
    assert torch.equal(o_lin, torch.zeros_like(o_lin))
    assert torch.isnan(o).all()  # every row attends key 3 in the sparse branch


def test_nan_denominator_of_the_complement_variant_is_not_zeroed():
    # A NaN in k of a marginal block makes phi(q) . z_i NaN: O_l must be NaN, not the "denominator not > 0" zero.
    q, k, v = make_qkv(1, 1, 64, 256, 16)
    w, b = make_projection(16)
    lut = torch.tensor([[[[0]]]], dtype=torch.int32)  # block 0 critical; blocks 1..3 marginal
    bmap = sla.BlockMap.from_lut(lut, k_blocks=4, block_q=64, block_k=64)
    k[0, 0, 200, 1] = float("nan")  # key block 3
    o = sla.sparse_linear_attention(
        q, k, v, topk=0.25, variant="complement", block_map=bmap, proj_weight=w, proj_bias=b
    )
    assert torch.isnan(o).all()


# ---- forward-mode AD and double backward ------------------------------------------------------------------------


def test_forward_mode_ad_raises():
    q, k, v = make_qkv(1, 1, 64, 64, 16)
    tangent = torch.ones_like(q)
    with pytest.raises(NotImplementedError, match="forward-mode AD"):
        torch.func.jvp(lambda x: sla.sparse_linear_attention(x, k, v, topk=0.5), (q,), (tangent,))
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual = fwAD.make_dual(q, tangent)
        with pytest.raises(NotImplementedError, match="q carries a tangent"):
            sla.sparse_linear_attention(dual, k, v, topk=0.5)


def test_double_backward_raises():
    q, k, v = make_qkv(1, 1, 64, 64, 16, requires_grad=True)
    o = sla.sparse_linear_attention(q, k, v, topk=0.5)
    (gq,) = torch.autograd.grad(o.square().sum(), q, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(gq.sum(), q)


def test_single_backward_with_create_graph_still_works():
    q, k, v = make_qkv(1, 1, 64, 64, 16, requires_grad=True)
    o = sla.sparse_linear_attention(q, k, v, topk=1.0)
    (gq,) = torch.autograd.grad(o.sum(), q, create_graph=True)
    qd = q.detach().clone().requires_grad_()
    (gd,) = torch.autograd.grad(dense_attention(qd, k, v).sum(), qd)
    torch.testing.assert_close(gq, gd, rtol=1e-9, atol=1e-9)


# ---- devices ----------------------------------------------------------------------------------------------------


def test_mixed_devices_raise_in_the_public_api():
    q, k, v = make_qkv(1, 1, 64, 64, 16)
    with pytest.raises(ValueError, match=r"k: expected device cpu like q, got meta"):
        sla.block_map(q, k.to("meta"), topk=0.5)
    with pytest.raises(ValueError, match=r"v: expected device cpu like q, got meta"):
        sla.sparse_linear_attention(q, k, v.to("meta"), topk=0.5)
    with pytest.raises(ValueError, match=r"proj_weight: expected device"):
        sla.sparse_linear_attention(q, k, v, topk=0.5, proj_weight=torch.zeros(16, 16, device="meta"))


def test_mixed_devices_raise_in_the_fake_kernels():
    # A meta tensor routes the op to its fake kernel, which used to hand back uninitialised CPU memory.
    q, k, v = make_qkv(1, 1, 64, 64, 16)
    with pytest.raises(ValueError, match="k: expected device cpu like q"):
        torch.ops.sla.block_map(q, k.to("meta"), 64, 64, 0.5, 0.0, "global", True)
    bmap = sla.block_map(q, k, topk=0.5)
    with pytest.raises(ValueError, match="v: expected device cpu like q"):
        torch.ops.sla.forward(
            q, k, v.to("meta"), None, None, *bmap.tables(), 64, 64, "global", "softmax", 0.0, 1e-5, False
        )
    tables = list(bmap.tables())
    tables[0] = tables[0].to("meta")
    with pytest.raises(ValueError, match="lut: expected device cpu like q"):
        torch.ops.sla.forward(q, k, v, None, None, *tables, 64, 64, "global", "softmax", 0.0, 1e-5, False)
    with pytest.raises(ValueError, match="count: expected device meta like lut"):
        torch.ops.sla.invert_block_map(
            bmap.lut.to("meta"), bmap.count, bmap.negl_lut.to("meta"), bmap.negl_count.to("meta"), bmap.k_blocks
        )


def test_all_meta_still_traces():
    q, k, v = (t.to("meta") for t in make_qkv(1, 1, 64, 64, 16))
    bmap = sla.block_map(q, k, topk=0.5)
    assert bmap.lut.device.type == "meta"
    o = sla.sparse_linear_attention(q, k, v, topk=0.5)
    assert o.shape == q.shape and o.device.type == "meta"


# ---- caller-supplied block maps ---------------------------------------------------------------------------------

NQ, NK, T = 3, 4, 2


def lut_map(mutate=None, *, negl=None, negl_count=None, inverse=False):
    lut = torch.tensor([[[[0, 1], [1, 2], [2, 3]]]], dtype=torch.int32)
    count = torch.full((1, 1, NQ), T, dtype=torch.int32)
    if mutate is not None:
        mutate(lut, count)
    return sla.BlockMap.from_lut(
        lut,
        count=count,
        k_blocks=NK,
        block_q=64,
        block_k=64,
        negl_lut=negl,
        negl_count=negl_count,
        with_inverse=inverse,
    )


def run_map(bmap, variant="global", grad=False, qkv=None):
    q, k, v = make_qkv(1, 1, 64 * NQ, 64 * NK, 16, requires_grad=grad) if qkv is None else qkv
    o = sla.sparse_linear_attention(q, k, v, topk=0.5, variant=variant, block_map=bmap)
    if grad:
        o.sum().backward()
    return o


BAD_LUTS = [
    (
        "entry out of range",
        lambda l, c: l.__setitem__((0, 0, 1, 1), 4),
        r"map\.lut: row \(b=0, h=0, i=1\) entry 1 is 4; expected a key-block index in \[0, Nk\) = \[0, 4\)",
    ),
    ("negative entry", lambda l, c: l.__setitem__((0, 0, 2, 0), -1), r"map\.lut: row \(b=0, h=0, i=2\) entry 0 is -1"),
    (
        "repeated entry",
        lambda l, c: l.__setitem__((0, 0, 0, 1), 0),
        r"map\.lut: row \(b=0, h=0, i=0\) entry 1 repeats key block 0",
    ),
    (
        "count above T",
        lambda l, c: c.__setitem__((0, 0, 1), 3),
        r"map\.count: row \(b=0, h=0, i=1\) is 3; expected 0 <= count <= T = 2",
    ),
    ("count below 0", lambda l, c: c.__setitem__((0, 0, 0), -2), r"map\.count: row \(b=0, h=0, i=0\) is -2"),
]


@pytest.mark.parametrize("name,mutate,pattern", BAD_LUTS, ids=[b[0] for b in BAD_LUTS])
def test_bad_lut_is_rejected_with_its_row_and_value(name, mutate, pattern):
    bmap = lut_map(mutate)
    with pytest.raises(ValueError, match=pattern):
        run_map(bmap)
    with pytest.raises(ValueError, match=pattern):
        sla.check_block_map(bmap)
    with pytest.raises(ValueError, match=pattern):
        bmap.with_inverse()  # invert_block_map checks its input too


def test_unsorted_lut_row_is_accepted():
    # docs/SPEC.md 7.7: permuting a LUT row changes O only by rounding; it is not an error.
    good = lut_map()
    perm = lut_map(lambda l, c: l.copy_(l.flip(-1)))
    sla.check_block_map(perm.with_inverse())
    qkv = make_qkv(1, 1, 64 * NQ, 64 * NK, 16)
    torch.testing.assert_close(run_map(perm, qkv=qkv), run_map(good, qkv=qkv), rtol=1e-12, atol=1e-12)


def test_entries_past_the_count_are_not_checked():
    def mutate(lut, count):
        count[0, 0, 1] = 1
        lut[0, 0, 1, 1] = 999  # unused

    run_map(lut_map(mutate))


def test_negligible_overlapping_critical_is_rejected():
    negl = torch.tensor([[[[3], [1], [0]]]], dtype=torch.int32)  # row 1: block 1 is also critical
    bmap = lut_map(negl=negl)
    with pytest.raises(
        ValueError,
        match=r"map\.negl_lut: row \(b=0, h=0, i=1\) entry 0 is key block 1, which "
        r"map\.lut also holds",
    ):
        run_map(bmap, variant="complement")


def test_negligible_count_and_entry_ranges():
    negl = torch.tensor([[[[3], [0], [0]]]], dtype=torch.int32)
    with pytest.raises(
        ValueError,
        match=r"map\.negl_count: row \(b=0, h=0, i=2\) is 2; expected 0 <= count <= "
        r"Tn = 1",
    ):
        run_map(lut_map(negl=negl, negl_count=torch.tensor([[[1, 1, 2]]], dtype=torch.int32)), variant="complement")
    negl = torch.tensor([[[[7], [0], [0]]]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"map\.negl_lut: row \(b=0, h=0, i=0\) entry 0 is 7"):
        run_map(lut_map(negl=negl), variant="complement")


def test_caller_inverse_tables_are_checked():
    bmap = lut_map(inverse=True)
    sla.check_block_map(bmap)
    run_map(bmap, grad=True)
    bad_offset = bmap.inv_offset.clone()
    bad_offset[0, 0, 2] = 100
    with pytest.raises(ValueError, match=r"map\.inv_offset: \(b=0, h=0\) entry 2 is 100; expected 3"):
        run_map(bmap._replace(inv_offset=bad_offset), grad=True)
    bad_index = bmap.inv_index.clone()
    bad_index[0, 0, 0] = -5
    with pytest.raises(ValueError, match=r"map\.inv_index: \(b=0, h=0\) entry 0 is -5; expected 0"):
        sla.check_block_map(bmap._replace(inv_index=bad_index))


def test_check_block_map_accepts_predicted_maps():
    q, k, _ = make_qkv(2, 3, 300, 500, 16)
    sla.check_block_map(sla.block_map(q, k, topk=0.3))
    sla.check_block_map(sla.block_map(q, k, topk=0.3, variant="complement", negligible=0.4))
    sla.check_block_map(sla.block_map(q, k, topk=0.3, with_inverse=False))
    with pytest.raises(TypeError, match="bmap"):
        sla.check_block_map("not a map")


# ---- messages that name the argument ----------------------------------------------------------------------------


@pytest.fixture
def qkv():
    return make_qkv(1, 2, 128, 128, 16)


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(topk=None), TypeError, r"topk: expected a number in \(0, 1\], got None .*or give top_p="),
        (dict(topk="0.5"), TypeError, r"topk: expected a number in \(0, 1\] .*got '0.5' \(str\)"),
        (dict(topk=True), TypeError, r"topk: expected a number in \(0, 1\] .*got True \(bool\)"),
        (dict(topk=[0.5, None]), TypeError, "topk: expected numbers in the per-head sequence, got None"),
        (dict(negligible_threshold=None), TypeError, "negligible_threshold: expected a number"),
        (dict(max_negligible="all"), TypeError, "max_negligible: expected a number"),
        (dict(negligible=None), TypeError, "negligible: expected a number"),
        (dict(eps=None), TypeError, "eps: expected a number > 0"),
        (dict(eps=-1e-5), ValueError, "eps: expected a finite value > 0"),
        (dict(scale=float("nan")), ValueError, "scale: expected a finite number > 0"),
        (dict(scale=-0.5), ValueError, "scale"),
        (dict(scale=True), ValueError, "scale"),
        (dict(block_q="64"), TypeError, "block_q: expected an int block size"),
        (dict(block_k=64.0), TypeError, "block_k: expected an int block size"),
        (dict(block_q=0), ValueError, "block_q"),
        (dict(block_k=-64), ValueError, "block_k"),
        (dict(negligible=-0.1, variant="complement"), ValueError, "negligible: expected a finite value in"),
        (dict(negligible=0.9, variant="complement"), ValueError, "negligible: expected a finite value in"),
        (dict(proj_weight=[[0.0]]), TypeError, "proj_weight: expected a torch.Tensor"),
        (dict(proj_weight=torch.zeros(16, 16, dtype=torch.int64)), TypeError, "proj_weight: expected a floating-point"),
        (dict(proj_bias=torch.zeros(16, dtype=torch.bool)), TypeError, "proj_bias: expected a floating-point"),
        (dict(proj_weight=torch.zeros(16, 8)), ValueError, r"proj_weight: expected shape\[1\] \(Dv\) = 16"),
        (dict(proj_bias=torch.zeros(1, 16)), ValueError, "proj_bias: expected 1 dimensions"),
    ],
)
def test_option_messages_name_the_argument(qkv, kwargs, exc, pattern):
    args = dict(topk=0.5)
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        sla.sparse_linear_attention(*qkv, **args)


def test_block_map_option_messages(qkv):
    q, k, _ = qkv
    with pytest.raises(TypeError, match=r"topk: expected a number in \(0, 1\], got None .*or give top_p="):
        sla.block_map(q, k, topk=None)
    with pytest.raises(TypeError, match="negligible: expected a number"):
        sla.block_map(q, k, topk=0.5, negligible=None)
    with pytest.raises(TypeError, match="block_k: expected an int"):
        sla.block_map(q, k, topk=0.5, block_k=None)
    with pytest.raises(ValueError, match="scale: expected a finite number > 0"):
        sla.block_map(q, k, topk=0.5, scale=True)  # the same check as sla.sparse_linear_attention's


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_non_floating_inputs_name_the_argument(qkv, dtype, which):
    q, k, v = qkv
    t = {"q": q, "k": k, "v": v}
    t[which] = t[which].to(dtype)
    with pytest.raises(TypeError, match=rf"{which}: expected dtype float16, bfloat16, float32 or float64, got "):
        sla.sparse_linear_attention(t["q"], t["k"], t["v"], topk=0.5)


def test_op_level_int64_q_names_q_and_floating_dtypes(qkv):
    q, k, _ = qkv
    with pytest.raises(TypeError, match=r"q: expected dtype float16, bfloat16, float32 or float64, got Long"):
        torch.ops.sla.block_map(q.long(), k, 64, 64, 0.5, 0.0, "global", True)


def test_op_level_table_dtype(qkv):
    q, k, v = qkv
    bmap = sla.block_map(q, k, topk=0.5)
    tables = list(bmap.tables())
    tables[1] = tables[1].long()
    with pytest.raises(TypeError, match=r"count: expected dtype int32 \(block-map tables\), got Long"):
        torch.ops.sla.forward(q, k, v, None, None, *tables, 64, 64, "global", "softmax", 0.0, 1e-5, False)


@pytest.mark.parametrize(
    "shape,pattern",
    [
        ((1, 2, 128, 0), r"q: expected shape\[3\] \(D\) >= 1, got 0"),
        ((1, 2, 0, 16), r"q: expected shape\[2\] \(Lq\) >= 1, got 0"),
        ((0, 2, 128, 16), r"q: expected shape\[0\] \(B\) >= 1, got 0"),
        ((1, 0, 128, 16), r"q: expected shape\[1\] \(H\) >= 1, got 0"),
    ],
)
def test_zero_size_dimensions_name_the_dimension(shape, pattern):
    q = torch.zeros(shape, dtype=torch.float64)
    k = torch.randn(shape[0], shape[1], 128, shape[3], dtype=torch.float64)
    with pytest.raises(ValueError, match=pattern):
        sla.sparse_linear_attention(q, k, k, topk=0.5)


def test_zero_size_k(qkv):
    q, _, _ = qkv
    k = torch.zeros(1, 2, 0, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"k: expected shape\[2\] \(Lk\) >= 1, got 0"):
        sla.sparse_linear_attention(q, k, k, topk=0.5)


@pytest.mark.parametrize("rank", [2, 3, 5])
def test_wrong_rank_names_the_argument(qkv, rank):
    q, k, v = qkv
    bad = torch.zeros((2,) * rank, dtype=torch.float64)
    for i, name in enumerate("qkv"):
        args = [q, k, v]
        args[i] = bad
        with pytest.raises(ValueError, match=rf"{name}: expected 4 dimensions"):
            sla.sparse_linear_attention(*args, topk=0.5)


def test_list_input_names_the_argument(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="v: expected a torch.Tensor, got list"):
        sla.sparse_linear_attention(q, k, v.tolist(), topk=0.5)
    with pytest.raises(TypeError, match="k: expected a torch.Tensor, got list"):
        sla.block_map(q, k.tolist(), topk=0.5)


def test_non_contiguous_last_dim_is_accepted(qkv):
    # Not an error: the op copies a tensor whose last dim is strided (the library needs stride 1 there).
    q, k, v = qkv
    qt = q.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert qt.stride(-1) != 1
    torch.testing.assert_close(
        sla.sparse_linear_attention(qt, k, v, topk=0.5), sla.sparse_linear_attention(q, k, v, topk=0.5), rtol=0, atol=0
    )
