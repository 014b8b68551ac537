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


def _two_image_cache(path):
    """Series of 3 and 2 slices, each slice a brain image (value 10*row) and a bone image (10*row + 1)."""
    import json

    from headct.data.cache import Cache, write_index, write_shard

    labels = ("bleed",)
    columns = {name: [] for name in ("row", "study", "patient", "series", "slice_index", "uid", "shard",
                                     "offset", "split", "fold", *labels)}
    row = 0
    for i, length in enumerate((3, 2)):
        key = f"series{i}"
        pixels = np.stack([np.stack([np.full((4, 4), 10 * (row + k) + c, np.uint8) for c in range(2)])
                           for k in range(length)])  # [S, 2, 4, 4]
        write_shard(path, key, pixels, None, {"key": key, "slices": length,
                                              "uids": [f"u{row + k}" for k in range(length)]})
        for k in range(length):
            values = dict(row=row, study=f"st{i}", patient=f"p{i}", series=key, slice_index=k, uid=f"u{row}",
                          shard=key, offset=k, split="train", fold=-1, bleed=row % 2)
            for name, value in values.items():
                columns[name].append(value)
            row += 1
    write_index(path, columns, list(labels))
    (path / "meta.json").write_text(json.dumps({"format_version": 1, "kind": "uint8", "size": 4, "labels": ["bleed"],
                                                "channels": ["brain", "bone"], "split": {}, "summary": {}}))
    return Cache(path)


def test_several_images_per_slice_stack_slice_major(tmp_path):
    cache = _two_image_cache(tmp_path)
    assert cache.channels == 2 and cache.slice(1).shape == (2, 4, 4)
    task = get_task("bleed", cache.labels)
    x, _, row = SliceDataset(cache, "train", task, context=1)[0]  # row 0: the first slice repeats below it
    assert row == 0 and x.shape == (6, 4, 4) and x.dtype == torch.uint8
    np.testing.assert_array_equal(x[:, 0, 0].numpy(), [0, 1, 0, 1, 10, 11])  # (brain, bone) per slice
    x, _, _ = SliceDataset(cache, "train", task)[4]
    np.testing.assert_array_equal(x[:, 0, 0].numpy(), [40, 41])
    series = SeriesDataset(cache, "train", task)
    x, _, _, _, mask = collate_series([series[0], series[1]])
    assert x.shape == (2, 3, 2, 4, 4) and mask.tolist() == [[True] * 3, [True, True, False]]
    np.testing.assert_array_equal(x[1, :, :, 0, 0].numpy(), [[30, 31], [40, 41], [0, 0]])
