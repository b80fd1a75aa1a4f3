from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timm_reid.data import CameraBatchSampler, RandomIdentitySampler

pid_lists = st.lists(st.integers(-1, 12), min_size=1, max_size=120)


@settings(max_examples=60, deadline=None)
@given(pids=pid_lists, k=st.integers(1, 4), p=st.integers(1, 5), seed=st.integers(0, 3),
       epoch=st.integers(0, 3))
def test_identity_batches_are_p_distinct_ids_times_k(pids, k, p, seed, epoch):
    known = {pid for pid in pids if pid >= 0}
    if len(known) < p:
        with pytest.raises(ValueError, match=f"{len(known)} identities"):
            RandomIdentitySampler(pids, num_instances=k, batch_size=p * k, seed=seed)
        return
    sampler = RandomIdentitySampler(pids, num_instances=k, batch_size=p * k, seed=seed)
    sampler.set_epoch(epoch)
    indices = list(sampler)
    assert len(indices) == len(sampler) and len(indices) % (p * k) == 0
    assert len(indices) > 0
    for start in range(0, len(indices), p * k):
        batch = [pids[i] for i in indices[start:start + p * k]]
        counts = Counter(batch)
        assert len(counts) == p and set(counts.values()) == {k}
        assert -1 not in counts
    # an identity with at least k images contributes each image at most once per epoch
    counts = Counter(indices)
    for i, n in counts.items():
        if pids.count(pids[i]) >= k:
            assert n == 1
    again = RandomIdentitySampler(pids, num_instances=k, batch_size=p * k, seed=seed)
    again.set_epoch(epoch)
    assert list(again) == indices


def test_identity_sampler_epochs_differ_and_cover_data():
    pids = [i // 6 for i in range(60)]  # 10 identities x 6 images
    sampler = RandomIdentitySampler(pids, num_instances=3, batch_size=6)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert first != second and sorted(first) == sorted(second) == list(range(60))


def test_identity_sampler_argument_errors():
    with pytest.raises(ValueError, match="batch_size=10 must be a positive multiple of "
                                         "num_instances=4"):
        RandomIdentitySampler([0, 1, 2], num_instances=4, batch_size=10)


@settings(max_examples=40, deadline=None)
@given(camids=st.lists(st.integers(0, 4), min_size=1, max_size=80), k=st.integers(1, 5),
       single=st.booleans(), seed=st.integers(0, 3))
def test_camera_batches(camids, k, single, seed):
    sizes = Counter(camids)
    if min(sizes.values()) < k:
        with pytest.raises(ValueError, match="fewer images than images_per_camera"):
            CameraBatchSampler(camids, images_per_camera=k, single_camera=single)
        return
    sampler = CameraBatchSampler(camids, images_per_camera=k, single_camera=single, seed=seed)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    flat = [i for batch in batches for i in batch]
    assert len(flat) == len(set(flat))  # no image twice in an epoch
    for batch in batches:
        cams = [camids[i] for i in batch]
        if single:
            assert len(batch) == k and len(set(cams)) == 1
        else:  # k images of every camera, cameras in increasing order
            assert cams == sorted(c for c in sizes for _ in range(k))
    expected = (sum(n // k for n in sizes.values()) if single
                else min(n // k for n in sizes.values()))
    assert len(batches) == expected
    assert list(CameraBatchSampler(camids, images_per_camera=k, single_camera=single,
                                   seed=seed)) == batches


def test_camera_sampler_epochs_and_errors():
    camids = [0] * 8 + [1] * 8
    sampler = CameraBatchSampler(camids, images_per_camera=4, single_camera=True)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    with pytest.raises(ValueError, match="camera ids must be >= 0"):
        CameraBatchSampler([-1, 0], images_per_camera=1)
    with pytest.raises(ValueError, match="images_per_camera=0"):
        CameraBatchSampler([0], images_per_camera=0)
