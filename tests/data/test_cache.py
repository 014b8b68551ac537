import json
import pickle

import numpy as np
import pytest

from headct.data.cache import Cache, read_record, remove_stale_temporaries
from headct.errors import InputError


def test_cache_reads_index_slices_and_masks(tmp_path, build_cache):
    cache = build_cache(tmp_path)
    assert len(cache) == 8 and cache.kind == "hu" and cache.size == 8
    np.testing.assert_array_equal(cache.rows("train"), [0, 1, 2])
    np.testing.assert_array_equal(cache.rows("test"), [4, 5, 6, 7])
    assert cache.index["row"].dtype == np.int64 and cache.index["uid"][5] == "u5"
    for row in range(8):
        assert (cache.slice(row) == row).all()
    assert cache.series_slices("series2").shape == (4, 8, 8)
    assert isinstance(cache.series_slices("series2"), np.memmap)
    np.testing.assert_array_equal(cache.series_rows("series2"), [4, 5, 6, 7])
    np.testing.assert_array_equal(cache.label_matrix[:4], [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    assert cache.mask(1)[0, 0] == 1 and cache.mask(2)[0, 0] == 0
    assert cache.mask(3) is None
    with pytest.raises(ValueError):
        cache.rows("training")


def test_open_shards_are_bounded_and_not_pickled(tmp_path, build_cache):
    cache = build_cache(tmp_path, lengths=(1,) * 6)
    cache.max_open = 2
    for row in range(6):
        assert cache.slice(row)[0, 0] == row
    assert len(cache._open) == 2
    clone = pickle.loads(pickle.dumps(cache))
    assert len(clone._open) == 0 and clone.slice(3)[0, 0] == 3


def test_unfinished_or_foreign_cache_is_refused(tmp_path, build_cache):
    with pytest.raises(InputError, match="meta.json"):
        Cache(tmp_path)
    build_cache(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(InputError, match="format"):
        Cache(tmp_path)


def test_record_counts_only_whole_shards(tmp_path, build_cache):
    build_cache(tmp_path)
    assert read_record(tmp_path, "series0")["slices"] == 3
    (tmp_path / "shards" / "series1.npy").write_bytes(b"\x93NUMPY broken")
    assert read_record(tmp_path, "series1") is None
    (tmp_path / "shards" / "series2.json").write_text("{")
    assert read_record(tmp_path, "series2") is None
    assert read_record(tmp_path, "absent") is None
    (tmp_path / "shards" / "series0.npy.tmp-77").write_bytes(b"")
    assert remove_stale_temporaries(tmp_path) == 1
