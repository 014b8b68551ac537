import numpy as np
import pytest

from headct.tasks import RSNA_LABELS, STROKE_LABELS, get_task

# rows: non-stroke, hemorrhagic, ischemic, unknown, inconsistent (two classes)
STROKE = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1], [0, 1, 1]], dtype=np.int8)


def test_rsna_task_is_multilabel_with_double_weight_on_any():
    cache_labels = ["any", *RSNA_LABELS[:5]]  # a cache may order its columns differently
    task = get_task("rsna", cache_labels)
    assert task.kind == "multilabel" and task.labels == RSNA_LABELS
    assert task.loss_weights == (1.0, 1.0, 1.0, 1.0, 1.0, 2.0)
    matrix = np.array([[1, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, -1]], dtype=np.int8)
    targets, keep = task.targets(matrix)
    np.testing.assert_array_equal(targets[0], [0, 0, 0, 0, 1, 1])  # reordered to RSNA order
    assert targets.dtype == np.float32
    np.testing.assert_array_equal(keep, [True, False])


def test_presence_from_stroke_columns():
    task = get_task("presence", list(STROKE_LABELS))
    targets, keep = task.targets(STROKE)
    assert task.labels == ("non-stroke", "stroke") and task.kind == "multiclass"
    np.testing.assert_array_equal(keep, [True, True, True, False, False])
    np.testing.assert_array_equal(targets[keep], [0, 1, 1])
    assert targets.dtype == np.int64


def test_presence_from_rsna_any():
    task = get_task("presence", list(RSNA_LABELS))
    matrix = np.zeros((3, 6), dtype=np.int8)
    matrix[1, 5] = 1
    matrix[2, 5] = -1
    targets, keep = task.targets(matrix)
    np.testing.assert_array_equal(keep, [True, True, False])
    np.testing.assert_array_equal(targets[:2], [0, 1])


def test_subtype_drops_non_stroke_rows():
    task = get_task("subtype", list(STROKE_LABELS))
    targets, keep = task.targets(STROKE)
    assert task.labels == ("ischemic", "hemorrhagic")
    np.testing.assert_array_equal(keep, [False, True, True, False, False])
    np.testing.assert_array_equal(targets[keep], [1, 0])  # hemorrhagic → 1, ischemic → 0


def test_three_class():
    task = get_task("3class", ["ischemic", "hemorrhagic", "non-stroke"])
    matrix = STROKE[:, ::-1]  # columns ischemic, hemorrhagic, non-stroke
    targets, keep = task.targets(matrix)
    np.testing.assert_array_equal(targets[keep], [0, 1, 2])
    assert task.labels == STROKE_LABELS


def test_custom_label_list():
    task = get_task("fracture, bleed", ["bleed", "age", "fracture"])
    assert task.labels == ("fracture", "bleed") and task.columns == (2, 0)
    targets, keep = task.targets(np.array([[1, 5, 0], [1, 5, -1]]))
    np.testing.assert_array_equal(targets[0], [0, 1])
    np.testing.assert_array_equal(keep, [True, False])


@pytest.mark.parametrize("name, labels", [
    ("rsna", list(STROKE_LABELS)),
    ("subtype", list(RSNA_LABELS)),
    ("presence", ["bleed"]),
    ("a,b", ["a"]),
    ("a,a", ["a"]),
    (" , ", ["a"]),
])
def test_missing_columns_are_refused(name, labels):
    with pytest.raises(ValueError):
        get_task(name, labels)
