import numpy as np
import torch
from torch.utils.data import DataLoader

from headct.data.datasets import SeriesDataset, SliceDataset, collate_series
from headct.tasks import get_task


def test_slice_dataset_2d(tmp_path, build_cache):
    cache = build_cache(tmp_path)
    data = SliceDataset(cache, "test", get_task("3class", cache.labels))
    assert len(data) == 4
    x, y, row = data[1]
    assert x.shape == (1, 8, 8) and x.dtype == torch.int16 and row == 5  # the cache's dtype: made float on the device
    assert (x == 5).all() and y.dtype == torch.int64 and int(y) == 2  # row 5 → class 5 % 3


def test_slice_dataset_context_repeats_ends(tmp_path, build_cache):
    cache = build_cache(tmp_path)
    data = SliceDataset(cache, "test", get_task("non-stroke,ischemic", cache.labels), context=2)
    x, y, row = data[0]  # row 4: first slice of series2 (rows 4..7)
    assert row == 4 and x.shape == (5, 8, 8)
    np.testing.assert_array_equal(x[:, 0, 0].numpy(), [4, 4, 4, 5, 6])
    np.testing.assert_array_equal(y.numpy(), [0.0, 0.0])  # row 4 is hemorrhagic
    x, _, _ = data[3]
    np.testing.assert_array_equal(x[:, 0, 0].numpy(), [5, 6, 7, 7, 7])
    single = SliceDataset(cache, "val", get_task("3class", cache.labels), context=1)
    np.testing.assert_array_equal(single[0][0][:, 0, 0].numpy(), [3, 3, 3])


def test_slice_dataset_drops_rows_the_task_cannot_use(tmp_path, build_cache):
    cache = build_cache(tmp_path)
    data = SliceDataset(cache, None, get_task("subtype", cache.labels))
    assert data.rows.tolist() == [1, 2, 4, 5, 7]  # non-stroke rows 0, 3, 6 dropped
    np.testing.assert_array_equal(data.labels(), [1, 0, 1, 0, 1])


def test_slice_dataset_in_a_loader_with_augment(tmp_path, build_cache):
    cache = build_cache(tmp_path)
    data = SliceDataset(cache, "train", get_task("3class", cache.labels), augment=lambda x: x + 1000)
    x, y, rows = next(iter(DataLoader(data, batch_size=3, num_workers=0)))
    assert x.shape == (3, 1, 8, 8) and rows.tolist() == [0, 1, 2] and x.dtype == torch.float32  # augmented as float
    np.testing.assert_array_equal(x[:, 0, 0, 0].numpy(), [1000, 1001, 1002])


def test_series_dataset_and_collate(tmp_path, build_cache):
    cache = build_cache(tmp_path)
    task = get_task("3class", cache.labels)
    data = SeriesDataset(cache, None, task)
    assert len(data) == 3
    x, y_slices, y_series, rows = data[0]
    assert x.shape == (3, 8, 8) and rows.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(y_slices.numpy(), np.eye(3))
    np.testing.assert_array_equal(y_series.numpy(), [0, 1, 0])  # hemorrhagic ties ischemic: the first stroke class
    x, y_slices, y_series, rows, mask = collate_series([data[0], data[1], data[2]])
    assert x.shape == (3, 4, 8, 8) and mask.tolist()[1] == [True, False, False, False]
    assert x.dtype == torch.int16 and (x[1, 1:] == 0).all()  # stored dtype kept, zero padding
    assert (y_slices[1, 1:] == -1).all() and rows[1].tolist() == [3, -1, -1, -1]
    assert y_series.shape == (3, 3)
    np.testing.assert_array_equal(y_series[1].numpy(), [1, 0, 0])  # one non-stroke slice


def test_series_dataset_marks_unusable_slices_and_subsamples(tmp_path, build_cache):
    cache = build_cache(tmp_path)
    data = SeriesDataset(cache, "test", get_task("subtype", cache.labels), max_slices=3)
    x, y_slices, y_series, rows = data[0]
    assert rows.tolist() == [4, 6, 7] and x[:, 0, 0].tolist() == [4, 6, 7]
    assert (y_slices[1] == -1).all()  # row 6 is non-stroke: not a subtype target
    np.testing.assert_array_equal(y_slices[0].numpy(), [0, 1])  # row 4 hemorrhagic → class 1
    multilabel = SeriesDataset(cache, "test", get_task("ischemic", cache.labels))
    assert multilabel[0][2].tolist() == [1.0]
