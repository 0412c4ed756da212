"""The forward and backward ops read the table widths from the block map itself: T = lut.shape[-1] and
Tn = negl_lut.shape[-1] (0 when empty). A map of any widths in 1 <= T <= Nk, 0 <= Tn <= Nk - T runs, whatever topk
and negligible say; widths out of range are argument errors naming the table and the range."""

from __future__ import annotations

import pytest
import torch

import sla

import reference
from conftest import make_projection, make_qkv, masks_of

TOL = dict(rtol=1e-8, atol=1e-10)
BQ, BK = 64, 64
LQ, LK = 190, 420  # Nq = 3, Nk = 7: topk = 0.3 would give T = floor(2.1) = 2, negligible = 0.3 would give Tn = 2
NQ, NK = 3, 7


def random_map(b, h, t, tn, *, with_inverse=True):
    """Every row: t critical key blocks, ascending, and tn other (negligible) ones; a few rows hold fewer."""
    perm = torch.stack([torch.randperm(NK) for _ in range(b * h * NQ)]).view(b, h, NQ, NK)
    lut = perm[..., :t].sort(dim=-1).values.to(torch.int32).contiguous()
    count = torch.full((b, h, NQ), t, dtype=torch.int32)
    if t > 1:
        count[0, 0, 1] = t - 1  # entries past the count are unused
    negl_lut = negl_count = None
    if tn > 0:
        negl_lut = perm[..., t : t + tn].sort(dim=-1).values.to(torch.int32).contiguous()
        negl_count = torch.full((b, h, NQ), tn, dtype=torch.int32)
        negl_count[0, -1, 0] = tn - 1
    return sla.BlockMap.from_lut(
        lut,
        k_blocks=NK,
        block_q=BQ,
        block_k=BK,
        count=count,
        negl_lut=negl_lut,
        negl_count=negl_count,
        with_inverse=with_inverse,
    )


def test_forward_and_backward_schemas_have_no_topk():
    for op in (torch.ops.sla.forward.default, torch.ops.sla.backward.default):
        names = [a.name for a in op._schema.arguments]
        assert "topk" not in names and "negligible" not in names, names
    # block_map keeps them: they decide the widths of the tables it makes.
    names = [a.name for a in torch.ops.sla.block_map.default._schema.arguments]
    assert "topk" in names and "negligible" in names


@pytest.mark.parametrize(
    "variant,t,tn",
    [
        ("global", 1, 0),
        ("global", 5, 0),
        ("global", 7, 0),
        ("complement", 6, 1),
        ("complement", 1, 4),
        ("complement", 3, 0),
        ("complement", 7, 0),
    ],
)
def test_maps_of_any_width_match_the_reference(variant, t, tn):
    q, k, v = make_qkv(2, 2, LQ, LK, 16, requires_grad=True)
    w, b = make_projection(16, requires_grad=True)
    bmap = random_map(2, 2, t, tn)
    assert bmap.real_topk == t and bmap.negl_lut.shape[-1] == tn
    # topk and negligible are not read once a map is given (they would give T = 2, Tn = 2 here).
    o = sla.sparse_linear_attention(
        q,
        k,
        v,
        topk=0.3,
        negligible=0.3 if variant == "complement" else 0.0,
        variant=variant,
        block_map=bmap,
        proj_weight=w,
        proj_bias=b,
    )
    d_o = torch.randn_like(o)
    o.backward(d_o)

    critical, negligible = masks_of(bmap)
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, w, b)]
    ref_o, _, _ = reference.sla_attention(
        *leaves[:3], critical, negligible, bq=BQ, bk=BK, variant=variant, weight=leaves[3], bias=leaves[4]
    )
    ref_o.backward(d_o)
    torch.testing.assert_close(o.detach(), ref_o.detach(), **TOL)
    for name, ours, ref in zip(("dq", "dk", "dv", "dW", "db"), (q.grad, k.grad, v.grad, w.grad, b.grad), leaves):
        torch.testing.assert_close(ours, ref.grad, **TOL, msg=lambda m, name=name: f"{name}: {m}")


def test_the_ops_themselves_take_the_widths_from_the_tables():
    q, k, v = make_qkv(1, 2, LQ, LK, 16)
    bmap = random_map(1, 2, 5, 2)
    options = (BQ, BK, "complement", "softmax", 0.0, 1e-5)
    o, lse, o_lin, lin_h, lin_z, o_sparse = torch.ops.sla.forward(q, k, v, None, None, *bmap.tables(), *options, True)
    critical, negligible = masks_of(bmap)
    ref_o, _, _ = reference.sla_attention(q, k, v, critical, negligible, bq=BQ, bk=BK, variant="complement")
    torch.testing.assert_close(o, ref_o, **TOL)
    d_o = torch.randn_like(o)
    dq, dk, dv, _, _ = torch.ops.sla.backward(
        d_o, q, k, v, None, None, *bmap.tables(), o, lse, o_lin, lin_h, lin_z, o_sparse, *options
    )
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    ref_o, _, _ = reference.sla_attention(*leaves, critical, negligible, bq=BQ, bk=BK, variant="complement")
    ref_o.backward(d_o)
    for ours, ref in zip((dq, dk, dv), leaves):
        torch.testing.assert_close(ours, ref.grad, **TOL)
    torch.library.opcheck(torch.ops.sla.forward.default, (q, k, v, None, None, *bmap.tables(), *options, True))


def test_complement_threshold_map_uses_its_row_counts_through_backward():
    # The threshold rule writes negl_count per row; the negl_lut width is only its capacity.
    q, k, v = make_qkv(1, 2, 256, 256, 8, requires_grad=True)
    w, b = make_projection(8, requires_grad=True)
    o, bmap = sla.sparse_linear_attention(
        q,
        k,
        v,
        top_p=0.6,
        max_blocks=3,
        variant="complement",
        negligible_threshold=0.1,
        max_negligible=0.5,
        block_q=32,
        block_k=32,
        proj_weight=w,
        proj_bias=b,
        return_block_map=True,
    )
    assert bmap.negl_lut.shape[-1] == 4  # min(floor(0.5 * 8), 8 - 3)
    d_o = torch.randn_like(o)
    o.backward(d_o)
    critical, negligible = masks_of(bmap)
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, w, b)]
    ref_o, _, _ = reference.sla_attention(
        *leaves[:3], critical, negligible, bq=32, bk=32, variant="complement", weight=leaves[3], bias=leaves[4]
    )
    ref_o.backward(d_o)
    torch.testing.assert_close(o.detach(), ref_o.detach(), **TOL)
    for ours, ref in zip((q.grad, k.grad, v.grad, w.grad, b.grad), leaves):
        torch.testing.assert_close(ours, ref.grad, **TOL)


def _forward(q, k, v, tables, variant="global"):
    return torch.ops.sla.forward(q, k, v, None, None, *tables, BQ, BK, variant, "softmax", 0.0, 1e-5, False)


def test_lut_width_out_of_range_is_refused():
    q, k, v = make_qkv(1, 2, LQ, LK, 16)
    tables = list(random_map(1, 2, 3, 0, with_inverse=False).tables())
    tables[0] = torch.zeros(1, 2, NQ, 0, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"map.lut: expected last dimension T in \[1, Nk = 7\], got 0"):
        _forward(q, k, v, tables)
    tables[0] = torch.zeros(1, 2, NQ, NK + 1, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"map.lut: expected last dimension T in \[1, Nk = 7\], got 8"):
        _forward(q, k, v, tables)
    # The same through the functional form and a BlockMap.
    bmap = random_map(1, 2, 3, 0, with_inverse=False)._replace(lut=torch.zeros(1, 2, NQ, NK + 1, dtype=torch.int32))
    with torch.no_grad(), pytest.raises(ValueError, match=r"map.lut: expected last dimension T in \[1, Nk = 7\]"):
        sla.sparse_linear_attention(q, k, v, block_map=bmap)
    with pytest.raises(ValueError, match=r"map.lut: expected last dimension T in \[1, Nk = 7\] \(Nk from map.inv_"):
        bmap.with_inverse()


def test_negligible_width_out_of_range_is_refused():
    q, k, v = make_qkv(1, 2, LQ, LK, 16)
    tables = list(random_map(1, 2, 5, 2, with_inverse=False).tables())
    tables[2] = torch.zeros(1, 2, NQ, 3, dtype=torch.int32)  # Tn = 3 > Nk - T = 2
    with pytest.raises(
        ValueError, match=r"map.negl_lut: expected last dimension Tn in \[0, Nk - T = 7 - 5 = 2\], got 3"
    ):
        _forward(q, k, v, tables, "complement")
    tables = random_map(1, 2, 5, 2, with_inverse=False).tables()
    with pytest.raises(ValueError, match=r"map.negl_lut: expected absent for the global variant"):
        _forward(q, k, v, tables, "global")
