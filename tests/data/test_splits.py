import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headct.data.splits import (
    SplitConfig,
    choose_groups,
    parse_fractions,
    split_studies,
    target_counts,
)


def _dataset(n_patients: int, seed: int = 0):
    """Patients with 1-3 studies each; ~20% of patients positive for label 0, ~50% for label 1."""
    rng = np.random.default_rng(seed)
    studies, patients, labels = [], [], []
    for p in range(n_patients):
        pos0, pos1 = rng.random() < 0.2, rng.random() < 0.5
        for s in range(int(rng.integers(1, 4))):
            studies.append(f"s{p}.{s}")
            patients.append(f"p{p}")
            labels.append([int(pos0 and s == 0), int(pos1), -1])
    return studies, patients, np.array(labels)


def test_no_patient_on_two_sides_and_fractions_hold():
    studies, patients, labels = _dataset(400)
    groups, how = choose_groups(studies, patients)
    result = split_studies(studies, groups, labels, SplitConfig(seed=3), how)
    assert how == "patient"
    side_of = {}
    for patient, side in zip(patients, result.split, strict=True):
        assert side_of.setdefault(patient, side) == side
    per_patient = np.array([list(side_of.values()).count(s) for s in ("train", "val", "test")])
    np.testing.assert_array_equal(per_patient, [320, 40, 40])  # exact in groups
    assert sum(result.counts.values()) == len(studies)


def test_same_seed_same_split_other_seed_differs():
    studies, patients, labels = _dataset(200)
    groups, how = choose_groups(studies, patients)
    a = split_studies(studies, groups, labels, SplitConfig(seed=1), how)
    b = split_studies(studies, groups, labels, SplitConfig(seed=1), how)
    c = split_studies(studies, groups, labels, SplitConfig(seed=2), how)
    np.testing.assert_array_equal(a.split, b.split)
    assert (a.split != c.split).any()


def test_stratification_keeps_positive_rates_close():
    studies, patients, labels = _dataset(600, seed=5)
    groups, how = choose_groups(studies, patients)
    result = split_studies(studies, groups, labels, SplitConfig(seed=0), how)
    patient_pos = {}
    for patient, row, side in zip(patients, labels, result.split, strict=True):
        patient_pos[patient] = (max(patient_pos.get(patient, (0, ""))[0], row[0]), side)
    rates = {}
    for side in ("train", "val", "test"):
        values = [pos for pos, s in patient_pos.values() if s == side]
        rates[side] = np.mean(values)
    overall = np.mean([pos for pos, _ in patient_pos.values()])
    for side, rate in rates.items():
        assert abs(rate - overall) < 0.02, (side, rate, overall)


def test_folds_cover_train_and_val_only():
    studies, patients, labels = _dataset(100)
    groups, how = choose_groups(studies, patients)
    result = split_studies(studies, groups, labels, SplitConfig(seed=0, folds=5), how)
    assert (result.fold[result.split == "test"] == -1).all()
    cv = result.fold[result.split != "test"]
    assert set(cv.tolist()) == {0, 1, 2, 3, 4}
    fold_of = {}
    for patient, fold in zip(patients, result.fold, strict=True):
        assert fold_of.setdefault(patient, fold) == fold


def test_grouping_falls_back_to_study_then_image():
    assert choose_groups(["a", "b"], ["p", "p"]) == (["patient:p", "patient:p"], "patient")
    assert choose_groups(["a", "b"], ["p", None]) == (["patient:p", "study:b"], "study")
    assert choose_groups(["a", "b"], [None, None], image_level=True)[1] == "image"


def test_small_sets_still_fill_every_side():
    np.testing.assert_array_equal(target_counts(6, (0.8, 0.1, 0.1)), [4, 1, 1])
    np.testing.assert_array_equal(target_counts(2, (0.8, 0.1, 0.1)), [2, 0, 0])
    np.testing.assert_array_equal(target_counts(10, (0.7, 0.3, 0.0)), [7, 3, 0])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), f=st.tuples(*[st.floats(0.0, 1.0)] * 3).filter(lambda t: sum(t) > 0.05))
def test_target_counts_sum_and_stay_near_fractions(n, f):
    counts = target_counts(n, tuple(x / sum(f) for x in f))
    assert counts.sum() == n and (counts >= 0).all()
    ideal = np.array(f) / sum(f) * n
    assert np.all(np.abs(counts - ideal) <= 2)


def test_parse_fractions():
    assert parse_fractions("0.7, 0.2,0.1") == (0.7, 0.2, 0.1)
    with pytest.raises(ValueError):
        parse_fractions("0.8,0.2")
    with pytest.raises(ValueError):
        SplitConfig(folds=1)
