"""The cross-camera distance kernel against a direct torch formula (CPU, TRITON_INTERPRET=1).

The reference below is the IICS inter-camera distance written out in float64 with explicit
``n x n x s`` minimum/maximum tensors; it shares no code with the kernel (which never forms the
maximum: it uses ``sum max = sum a + sum b - sum min``).
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

jaccard = pytest.importorskip("timm_reid.kernels.jaccard")
cross_camera_distance = jaccard.cross_camera_distance
weighted_jaccard = jaccard.weighted_jaccard

if not jaccard.INTERPRET:  # conftest.py sets the flag; the kernels were imported before it
    pytest.skip("needs TRITON_INTERPRET=1 set before triton is imported", allow_module_level=True)

# (dtype, atol): inputs are rounded to the dtype first and the reference uses those rounded values,
# so only the kernel's fp32 accumulation differs from the float64 reference (~1e-7 at these sizes).
TOLERANCES = [
    (torch.float32, 1e-5),
    (torch.float16, 1e-5),
    (torch.bfloat16, 1e-5),
]


def reference_distance(features, scores, camids, mu):
    f = features.double()
    s = scores.double()
    cos = f @ f.T
    smin = torch.minimum(s[:, None, :], s[None, :, :]).sum(-1)
    smax = torch.maximum(s[:, None, :], s[None, :, :]).sum(-1)
    jac = torch.where(smax > 0, smin / smax.clamp_min(1e-300), torch.zeros_like(smax))
    other_camera = camids[:, None] != camids[None, :]
    return 1.0 - cos - mu * jac * other_camera


def reference_jaccard(a, b):
    a, b = a.double(), b.double()
    smin = torch.minimum(a[:, None, :], b[None, :, :]).sum(-1)
    smax = torch.maximum(a[:, None, :], b[None, :, :]).sum(-1)
    return torch.where(smax > 0, smin / smax.clamp_min(1e-300), torch.zeros_like(smax))


def make_inputs(n, d, s, cameras, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1).to(dtype)
    # Concatenated per-camera softmax: one probability vector per camera head, sharp enough that
    # the Jaccard term spreads over (0, 1).
    heads = torch.randn(n, s, generator=g).mul(3.0).chunk(max(1, min(cameras, s)), dim=1)
    scores = torch.cat([h.softmax(dim=1) for h in heads], dim=1).to(dtype)
    camids = torch.randint(0, cameras, (n,), generator=g)
    return features, scores, camids


def assert_close(actual, expected, atol, what):
    """Mismatch report that locates the error (count, first indices, NaN/inf)."""
    actual = actual.double()
    bad_values = ~torch.isfinite(actual)
    if bad_values.any():
        idx = bad_values.nonzero()[:5].tolist()
        raise AssertionError(f"{what}: {int(bad_values.sum())} non-finite values, first at {idx}")
    err = (actual - expected).abs()
    bad = err > atol
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{err.numel()} elements off by more than {atol} "
            f"(max {err.max().item():.3g}); first at {idx}: "
            f"{[(actual[i, j].item(), expected[i, j].item()) for i, j in idx]}"
        )


# n = 37: two row tiles of 32, the second partial, so off-diagonal tiles and their mirrored
# writes are exercised; d and s odd so every loop ends on a masked chunk.
@pytest.mark.parametrize("dtype,atol", TOLERANCES, ids=lambda v: str(v).replace("torch.", ""))
def test_matches_reference(dtype, atol):
    features, scores, camids = make_inputs(37, 45, 29, cameras=3, dtype=dtype)
    got = cross_camera_distance(features, scores, camids, mu=0.3)
    assert got.dtype == torch.float32 and got.shape == (37, 37)
    assert_close(got, reference_distance(features, scores, camids, 0.3), atol, f"distance {dtype}")


def test_many_tiles_and_groups():
    # 133 rows -> 5 tiles per side: more row tiles than one launch group (4 under the interpreter).
    features, scores, camids = make_inputs(133, 17, 11, cameras=6, seed=1)
    got = cross_camera_distance(features, scores, camids, mu=0.02)
    assert_close(got, reference_distance(features, scores, camids, 0.02), 1e-5, "distance n=133")


def test_mu_zero_is_cosine_distance():
    features, scores, camids = make_inputs(21, 33, 7, cameras=3, seed=2)
    got = cross_camera_distance(features, scores, camids, mu=0.0)
    assert_close(got, 1.0 - features.double() @ features.double().T, 1e-5, "mu=0")


def test_same_camera_pairs_have_no_jaccard_term():
    features, scores, camids = make_inputs(23, 9, 13, cameras=3, seed=3)
    got = cross_camera_distance(features, scores, camids, mu=0.5)
    cosine_only = cross_camera_distance(features, scores, camids, mu=0.0)
    same = camids[:, None] == camids[None, :]
    assert torch.equal(got[same], cosine_only[same])
    assert (got[~same] <= cosine_only[~same]).all()
    one_camera = torch.zeros_like(camids)
    assert torch.equal(cross_camera_distance(features, scores, one_camera, mu=0.5), cosine_only)


def test_diagonal_is_zero_and_matrix_symmetric():
    features, scores, camids = make_inputs(37, 64, 12, cameras=4, seed=4)
    got = cross_camera_distance(features, scores, camids, mu=0.3)
    assert torch.allclose(got.diagonal(), torch.zeros(37), atol=1e-6)
    assert torch.equal(got, got.T)  # mirrored tiles: exact, not approximate


def test_deterministic():
    features, scores, camids = make_inputs(37, 31, 19, cameras=3, dtype=torch.float16, seed=5)
    first = cross_camera_distance(features, scores, camids, mu=0.3)
    second = cross_camera_distance(features, scores, camids, mu=0.3)
    assert torch.equal(first, second)


def test_strided_inputs_and_out_buffer():
    features, scores, camids = make_inputs(19, 21, 15, cameras=3, seed=6)
    # Column-major features, scores as every other column of a wider tensor, strided camids.
    features_t = features.T.contiguous().T
    wide = torch.zeros(19, 30)
    wide[:, ::2] = scores
    cam_wide = torch.stack([camids, camids], dim=1)[:, 0]
    out_storage = torch.full((19, 40), float("nan"))
    out = out_storage[:, 1:20]  # non-contiguous rows
    result = cross_camera_distance(features_t, wide[:, ::2], cam_wide, 0.3, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert_close(out, reference_distance(features, scores, camids, 0.3), 1e-5, "strided")
    assert torch.isnan(out_storage[:, 0]).all() and torch.isnan(out_storage[:, 20:]).all()


def test_int32_camids_and_python_int_mu():
    features, scores, camids = make_inputs(17, 8, 6, cameras=2, seed=7)
    got = cross_camera_distance(features, scores, camids.int(), 1)
    assert_close(got, reference_distance(features, scores, camids, 1.0), 1e-5, "int32 camids")


def test_empty_input():
    got = cross_camera_distance(torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 0.1)
    assert got.shape == (0, 0)


def test_weighted_jaccard():
    _, a, _ = make_inputs(13, 4, 21, cameras=3, seed=8)
    _, b, _ = make_inputs(35, 4, 21, cameras=3, seed=9)
    a[0] = 0.0  # an all-zero row: 0 / 0 is defined as 0
    b[3] = 0.0
    assert_close(weighted_jaccard(a, b), reference_jaccard(a, b), 1e-6, "jaccard a x b")
    sym = weighted_jaccard(b)
    assert_close(sym, reference_jaccard(b, b), 1e-6, "jaccard b x b")
    assert torch.equal(sym, sym.T)
    assert sym[3, 3] == 0.0 and torch.allclose(sym.diagonal()[torch.arange(35) != 3], torch.ones(34))


@settings(max_examples=6, deadline=None)
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 40),
    s=st.integers(1, 40),
    cameras=st.integers(1, 5),
    mu=st.floats(0.0, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float16]),
)
def test_random_shapes(n, d, s, cameras, mu, dtype):
    features, scores, camids = make_inputs(n, d, s, cameras, dtype=dtype, seed=n * 1000 + d)
    got = cross_camera_distance(features, scores, camids, mu)
    assert_close(got, reference_distance(features, scores, camids, mu), 1e-5, "random shapes")


def test_torch_compile_traces_the_op():
    features, scores, camids = make_inputs(11, 6, 5, cameras=2, seed=10)

    def fn(f, s, c):
        return cross_camera_distance(f, s, c, 0.25) * 2.0

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(features, scores, camids), fn(features, scores, camids))


@pytest.mark.parametrize(
    "features,scores,camids,error,match",
    [
        (torch.zeros(4, 3, 1), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), ValueError, "features must be 2-D"),
        (torch.zeros(4, 3), torch.zeros(5, 2), torch.zeros(4, dtype=torch.long), ValueError, "one row per sample"),
        (torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), ValueError, r"camids must be a tensor of shape \(4,\)"),
        (torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(4), TypeError, "integer"),
        (torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), TypeError, "float32, float16 or bfloat16"),
        (torch.zeros(4, 3), torch.zeros(4, 2, dtype=torch.int64), torch.zeros(4, dtype=torch.long), TypeError, "scores must be"),
        (torch.zeros(4, 3), torch.zeros(4, 2, device="meta"), torch.zeros(4, dtype=torch.long), ValueError, "one device"),
        (torch.zeros(4, 0), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), ValueError, "at least one column"),
    ],
)
def test_errors(features, scores, camids, error, match):
    with pytest.raises(error, match=match):
        cross_camera_distance(features, scores, camids, 0.1)


def test_error_on_bad_out_and_mu():
    features, scores, camids = make_inputs(5, 3, 2, cameras=2)
    with pytest.raises(ValueError, match=r"float32 tensor of shape \(5, 5\)"):
        cross_camera_distance(features, scores, camids, 0.1, out=torch.zeros(5, 5, dtype=torch.float16))
    with pytest.raises(ValueError, match="finite"):
        cross_camera_distance(features, scores, camids, float("nan"))


def test_error_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setattr(jaccard, "INTERPRET", False)
    features, scores, camids = make_inputs(5, 3, 2, cameras=2)
    with pytest.raises(ValueError, match="timm_reid.cluster.cross_camera_distance"):
        cross_camera_distance(features, scores, camids, 0.1)


def test_not_differentiable_inputs_are_detached():
    features, scores, camids = make_inputs(6, 4, 3, cameras=2, seed=11)
    got = cross_camera_distance(features.requires_grad_(), scores, camids, 0.1)
    assert not got.requires_grad
