"""Label parsers: RSNA CSV, PNG class maps and grouping, CSV values, NIfTI names."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headct.data.nifti_labels import match_key, volume_name
from headct.data.plan import SeriesJob, SliceSource, series_key
from headct.data.rsna import lookup_rsna, read_rsna_labels
from headct.data.stroke import parse_class_map, split_group
from headct.data.tabular import parse_label
from headct.errors import InputError
from headct.tasks import RSNA_LABELS


def test_rsna_csv_both_id_styles_and_missing_rows(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("ID,Label\n"
                    "ID_63eb1e259_epidural,0\nID_63eb1e259_any,1\nID_63eb1e259_subdural,1\n"
                    "ID_1.2.840.5_any,0\nID_1.2.840.5_epidural,1\n"
                    "ID_x_unknowntype,1\nnonsense,1\nID_y_any,0.7\n")
    labels, bad = read_rsna_labels(path)
    assert labels["ID_63eb1e259"] == [0, -1, -1, -1, 1, 1]
    assert labels["ID_1.2.840.5"] == [1, -1, -1, -1, -1, 0]
    assert bad == ["line 7", "line 8", "line 9"]
    assert lookup_rsna(labels, "ID_63eb1e259") == "ID_63eb1e259"  # real RSNA: the UID is "ID_<hex>"
    assert lookup_rsna(labels, "1.2.840.5") == "ID_1.2.840.5"  # dotted UID
    assert lookup_rsna(labels, "1.2.840.6") is None


def test_rsna_csv_needs_its_columns(tmp_path):
    (tmp_path / "l.csv").write_text("image,label\n")
    with pytest.raises(InputError, match="ID,Label"):
        read_rsna_labels(tmp_path / "l.csv")
    with pytest.raises(InputError, match="not found"):
        read_rsna_labels(tmp_path / "none.csv")


@given(uid=st.from_regex(r"[0-9]+(\.[0-9]+){0,6}", fullmatch=True), sub=st.sampled_from(RSNA_LABELS),
       value=st.sampled_from([0, 1]))
def test_rsna_row_round_trip(tmp_path_factory, uid, sub, value):
    path = tmp_path_factory.mktemp("rsna") / "l.csv"
    path.write_text(f"ID,Label\nID_{uid}_{sub},{value}\n")
    labels, bad = read_rsna_labels(path)
    assert not bad
    assert labels[lookup_rsna(labels, uid)][RSNA_LABELS.index(sub)] == value


@given(group=st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True), number=st.integers(0, 9999))
def test_png_group_names(group, number):
    assert split_group(f"{group}_{number:03d}") == (group, number)


def test_png_names_without_group():
    assert split_group("12345") is None and split_group("scan_a") is None


def test_class_map():
    assert parse_class_map(None)["kanama"] == "hemorrhagic"
    assert parse_class_map("Normal=non-stroke, Bleed=hemorrhagic") == {"normal": "non-stroke",
                                                                       "bleed": "hemorrhagic"}
    with pytest.raises(ValueError):
        parse_class_map("normal")


@pytest.mark.parametrize("text, value", [("1", 1), ("0", 0), ("1.0", 1), ("TRUE", 1), ("no", 0), ("", -1),
                                         (None, -1), (" yes ", 1), ("2", None), ("maybe", None)])
def test_csv_label_values(text, value):
    assert parse_label(text) == value


def test_nifti_names():
    assert volume_name(__import__("pathlib").Path("ct/049.nii.gz")) == "049"
    assert match_key("049") == match_key("49") == "49"
    assert match_key("p7") == "p7"


def test_series_keys_are_safe_and_unique():
    taken: set[str] = set()
    a = series_key("1.2.840.1", taken)
    b = series_key("../../etc", taken)
    c = series_key("1.2.840.1", taken)
    assert a == "1.2.840.1" and "/" not in b and c != a


def test_job_digest_changes_with_what_is_read():
    job = SeriesJob("k", "s", "", "s", [SliceSource("/a/1.dcm", "1.dcm", "dicom")])
    other = SeriesJob("k", "s", "", "s", [SliceSource("/a/2.dcm", "2.dcm", "dicom")])
    assert job.digest(64) != job.digest(32) and job.digest(64) != other.digest(64)
    assert job.digest(64) == SeriesJob("k", "s", "p", "s", [SliceSource("/b/1.dcm", "1.dcm", "dicom")]).digest(64)
    nifti = SeriesJob("k", "s", "", "s", [SliceSource("/a.nii", "a.nii", "nifti")], frame_labels={0: (1,)})
    assert nifti.labels_for(0, 0) == (1,) and nifti.labels_for(0, 1) is None
    np.testing.assert_array_equal(job.labels_for(0, None) or (), ())
