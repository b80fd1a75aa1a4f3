"""_condensed: index arithmetic, row reads/writes and the exact float32 selection, against
dense matrices and np.sort."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timm_reid.cluster import _condensed
from timm_reid.cluster._condensed import (column_bases, kth_smallest_float32, num_samples, pair_index,
                                          read_row, segment_starts, symmetric_rows, write_row,
                                          write_upper_rows)


def symmetric_matrix(seed, n):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n)).astype(np.float32)
    return a + a.T


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), n=st.integers(2, 30), data=st.data())
def test_rows_read_from_the_condensed_vector_equal_the_matrix_rows(seed, n, data):
    dense = symmetric_matrix(seed, n)
    condensed = dense[np.triu_indices(n, k=1)]
    starts = segment_starts(n)
    start = data.draw(st.integers(0, n - 1))
    stop = data.draw(st.integers(start + 1, n))
    # Tiny gathers: the column part is read in several pieces.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_condensed, "_GATHER_ELEMENTS", data.draw(st.sampled_from([1, 5, 1 << 22])))
        with_diagonal = symmetric_rows(condensed, starts, start, stop, np.diag(dense))
        zero_diagonal = symmetric_rows(condensed, starts, start, stop)
    expected = dense[start:stop].copy()
    np.testing.assert_array_equal(with_diagonal, expected)
    np.fill_diagonal(expected[:, start:stop], 0)
    np.testing.assert_array_equal(zero_diagonal, expected)
    i = data.draw(st.integers(0, n - 1))
    row = read_row(condensed, starts, column_bases(starts), i, np.full(n, -7.0))
    np.testing.assert_array_equal(np.delete(row, i), np.delete(dense[i], i))


def test_pair_index_is_the_position_in_triu_order():
    n = 9
    rows, cols = np.triu_indices(n, k=1)
    starts = segment_starts(n)
    np.testing.assert_array_equal(pair_index(starts, rows, cols), np.arange(rows.size))
    np.testing.assert_array_equal(pair_index(starts, cols, rows), np.arange(rows.size))  # either order


def test_writes_change_exactly_their_entries():
    n = 7
    starts = segment_starts(n)
    condensed = np.zeros(n * (n - 1) // 2)
    write_row(condensed, starts, column_bases(starts), 3, np.arange(n, dtype=float) + 1)
    dense = np.zeros((n, n))
    dense[3] = dense[:, 3] = np.arange(n) + 1
    np.testing.assert_array_equal(condensed, dense[np.triu_indices(n, k=1)])
    block = np.arange(2 * n, dtype=float).reshape(2, n)
    write_upper_rows(condensed, starts, 5, block)  # rows 5 and 6: (5, 6) only
    dense[5, 6] = block[0, 6]
    np.testing.assert_array_equal(condensed, dense[np.triu_indices(n, k=1)])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(values=st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=200), data=st.data())
def test_kth_smallest_equals_the_sorted_entry(values, data):
    array = np.array(values, dtype=np.float32)
    k = data.draw(st.integers(0, array.size - 1))
    chunk = data.draw(st.sampled_from([1, 7, 1 << 24]))
    assert kth_smallest_float32(array, k, chunk) == np.sort(array)[k]


def test_kth_smallest_with_duplicates_zeros_and_infinities():
    array = np.array([3, -0.0, 0.0, -np.inf, np.inf, 3, 3, -2.5, 1e-45], dtype=np.float32)
    assert [kth_smallest_float32(array, k) for k in range(array.size)] == np.sort(array).tolist()


@pytest.mark.parametrize("size", [0, 2, 4])
def test_bad_condensed_length(size):
    with pytest.raises(ValueError, match="condensed matrix of length"):
        num_samples(size)
