"""Fuzz: corrupted phantom DICOM never escapes read_slice/read_dicom, never hangs, never spoils good slices.

Every named fault of issue 12 (tests/conftest.py ``BAD_DICOM_KINDS``) and random bit flips and
truncations of a valid phantom slice must give either one ``InputError`` line that names the file,
or a correct read; the good study beside it must read exactly as it does alone.
"""

from __future__ import annotations

import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headct.errors import InputError
from headct.io.dicom import DicomSlice, read_dicom, read_slice
from headct.phantom import PhantomConfig, write_phantom

SECONDS = 20
META_BYTES = (128, 400)  # the file meta (transfer syntax, group length) of a phantom slice
HEADER_BYTES = 1600  # where the header tags of a 64 px phantom slice end and its pixels begin


@contextmanager
def deadline(seconds: float = SECONDS):
    """Fail instead of hanging: SIGALRM interrupts a blocking open() or read() in the main thread."""

    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict:
    """Two phantom studies (64 px, 4 slices): the good study's clean read, and a slice of the other as template."""
    root = tmp_path_factory.mktemp("phantom")
    write_phantom(PhantomConfig(out=root, studies=2, size=64, slices=4, layout="rsna"))
    good, other = sorted(p for p in (root / "dicom").iterdir())
    (clean,) = read_dicom(good)
    return {"root": root, "good": good, "clean": clean, "template": sorted(other.glob("*.dcm"))[0]}


def _good_tree(phantom: dict, dest: Path) -> Path:
    """The good study with the phantom's siblings (labels.csv, masks/, phantom.json) around it."""
    shutil.copytree(phantom["good"], dest / "dicom" / "study")
    shutil.copytree(phantom["root"] / "masks", dest / "masks")
    for name in ("labels.csv", "phantom.json"):
        shutil.copy(phantom["root"] / name, dest / name)
    return dest / "dicom" / "study"


def _assert_one_line_naming(err: InputError, path: Path) -> None:
    message = str(err)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"{path}: ") and len(err.fault) > 10


def _assert_good_study_intact(volumes, phantom: dict) -> None:
    clean = phantom["clean"]
    (good,) = [v for v in volumes if v.series_uid == clean.series_uid]
    np.testing.assert_array_equal(good.pixels, clean.pixels)
    assert good.slice_uids == clean.slice_uids


def test_every_named_fault_is_one_line_and_the_batch_goes_on(phantom, tmp_path, bad_kind, bad_dicom) -> None:
    study = _good_tree(phantom, tmp_path)
    bad = bad_dicom(study, bad_kind, phantom["template"])
    with deadline():
        errors: list[InputError] = []
        volumes = read_dicom(tmp_path, errors=errors)
        _assert_good_study_intact(volumes, phantom)
        for err in errors:
            assert Path(err.path).parent == study and "\n" not in str(err)  # no sibling is a DICOM fault
        if bad_kind == "instance_inf" or bad_kind == "instance_nan":
            assert errors == [] and len(volumes) == 2
            read = read_slice(bad)
            assert read.warnings == ["InstanceNumber is malformed (not a finite integer); ignored"]
            np.testing.assert_array_equal(read.hu, read_slice(phantom["template"]).hu)
            return
        assert len(volumes) == 1
        assert str(errors[0]).startswith(f"{bad}: ")
        assert len(errors) == (2 if bad_kind == "symlink_loop" else 1)
        with pytest.raises(InputError) as info:
            read_slice(bad)
        _assert_one_line_naming(info.value, bad)


flips = st.lists(
    st.tuples(st.one_of(st.integers(*META_BYTES), st.integers(0, HEADER_BYTES), st.integers(0, 10_000)),
              st.integers(0, 7)),
    min_size=1, max_size=6,
)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=flips, keep=st.one_of(st.none(), st.integers(0, 10_000)))
def test_random_flips_and_truncations_give_an_error_line_or_a_read(phantom, tmp_path, flips, keep) -> None:
    data = bytearray(phantom["template"].read_bytes())
    for at, bit in flips:
        data[at % len(data)] ^= 1 << bit
    if keep is not None:
        data = data[: keep % len(data)]
    folder = tmp_path / "fuzz"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(phantom["good"], folder)
    path = folder / "fuzzed.dcm"
    path.write_bytes(bytes(data))
    with deadline():
        try:
            read = read_slice(path)
        except InputError as err:
            _assert_one_line_naming(err, path)
        else:
            assert isinstance(read, DicomSlice) and read.hu.dtype == np.int16 and read.hu.ndim == 2
        errors: list[InputError] = []
        _assert_good_study_intact(read_dicom(folder, errors=errors), phantom)
    assert all("\n" not in str(err) for err in errors)
