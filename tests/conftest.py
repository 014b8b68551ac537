"""Fixtures shared by several test modules."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from headct.models.backbones import SliceClassifier
from headct.models.registry import registered_model


@pytest.fixture(scope="session")
def write_ct_series() -> Callable[..., tuple[str, list[str], np.ndarray]]:
    """Writer of small CT DICOM series that carry patient identifiers (which no output may echo)."""
    return _write_ct_series


TINY_MODEL = "tiny-test-effnet"


def _tiny_builder(num_classes: int, *, input_kind: str = "hu", drop_rate: float = 0.0, pretrained: bool = False,
                  image_channels: int = 1):
    return SliceClassifier("test_efficientnet", num_classes, target_layers=["encoder.conv_head"],
                           input_kind=input_kind, drop_rate=drop_rate, pretrained=pretrained,
                           image_channels=image_channels)


@pytest.fixture(scope="module")
def tiny_model() -> Iterator[str]:
    """A tiny 2-D model registered as ``TINY_MODEL`` for one test module; the registry is restored after."""
    with registered_model(TINY_MODEL, _tiny_builder):
        yield TINY_MODEL


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RSNA-style cache (see :func:`_tiny_cache`), one per test module."""
    return _tiny_cache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def fold_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny cache with 3 folds over its train and val studies (study s → fold s % 3; test → -1)."""
    path = _tiny_cache(tmp_path_factory.mktemp("fold_cache"))
    index = path / "index.csv"
    lines = index.read_text().splitlines()
    header = lines[0].split(",")
    split_col, fold_col, study_col = header.index("split"), header.index("fold"), header.index("study")
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        row[fold_col] = "-1" if row[split_col] == "test" else str(int(row[study_col].removeprefix("study")) % 3)
    index.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    return path


def _tiny_cache(path: Path, n_series: int = 20, slices: int = 6, size: int = 32) -> Path:
    """A small RSNA-style cache: half the series have a bright intraparenchymal blob on slices 1..3."""
    from headct.data.cache import (
        FORMAT_VERSION,
        INDEX_COLUMNS,
        write_index,
        write_meta,
        write_shard,
    )

    rng = np.random.default_rng(0)
    labels = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
    columns: dict[str, list] = {k: [] for k in (*INDEX_COLUMNS, *labels)}
    splits = ["train"] * 12 + ["val"] * 4 + ["test"] * 4
    yy, xx = np.mgrid[:size, :size]
    head = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.4) ** 2
    for s in range(n_series):
        key = f"s{s:03d}"
        pixels = np.full((slices, size, size), -1000, np.int16)
        pixels[:, head] = 30
        pixels += rng.normal(0, 5, pixels.shape).astype(np.int16)
        for k in range(slices):
            label = [0] * 6
            if s % 2 == 0 and 1 <= k <= 3:
                cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
                pixels[k][(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = 75
                label[1] = label[5] = 1
            values = (len(columns["row"]), f"study{s}", "", f"series{s}", k, f"uid{s}.{k}", key, k, splits[s], -1)
            for name, value in zip((*INDEX_COLUMNS, *labels), (*values, *label), strict=True):
                columns[name].append(value)
        write_shard(path, key, pixels, None, {"key": key, "slices": slices,
                                              "uids": [f"uid{s}.{k}" for k in range(slices)]})
    write_index(path, columns, labels)
    write_meta(path, {"format_version": FORMAT_VERSION, "source_format": "rsna", "kind": "hu", "size": size,
                      "labels": labels, "summary": {}, "has_masks": False,
                      "split": {"how": "study", "seed": 0, "n_train": 12, "n_val": 4, "n_test": 4}})
    return path


def _write_ct_series(folder: Path, slices: int = 4, size: int = 40, seed: int = 0, study_uid: str | None = None) -> tuple[str, list[str], np.ndarray]:
    """CT DICOM files named against scan order (IM000 is the top slice). Returns (study uid, sop uids in scan order, HU)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    hu = rng.integers(-1000, 1000, (slices, size, size)).astype(np.int16)
    uids = [generate_uid() for _ in range(slices)]
    for i in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, uids[i]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uids[i]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Doe^Jane", "PID-SECRET-42"
        ds.PatientBirthDate, ds.AccessionNumber = "19700101", "ACC-SECRET-7"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 5.0 * i], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness, ds.InstanceNumber = [0.5, 0.5], 5.0, i + 1
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = hu[i].tobytes()
        ds.save_as(folder / f"IM{slices - 1 - i:03d}.dcm", enforce_file_format=True)
    return study_uid, uids, hu


# --- corrupted DICOM (issue 12): every fault kind a reader must survive ---------------
# Used by tests/io/test_fuzz.py, tests/io/test_discovery.py, tests/data/test_prepare_badfiles.py
# and tests/test_predict_badfiles.py: ``write_bad_dicom(folder, kind, template)`` puts one bad
# entry beside good slices. Content faults rewrite the template's bytes (as another study, so a
# file that is still readable forms a study of its own); "fifo" and "symlink_loop" are file-system
# faults. Explicit VR little endian is written by hand so the file meta can lie about the body.

BAD_DICOM_KINDS = (
    "slope_1e308", "intercept_1e308", "slope_nan", "intercept_nan", "slope_inf", "slope_zero",
    "instance_inf", "instance_nan", "frames_inf", "frames_nan", "pixel_representation_2",
    "empty_pixel_data", "empty_fragment", "jpeg_garbage", "deflate_on_plain", "empty_transfer_syntax",
    "meta_bit_flip", "truncated", "not_dicom", "fifo", "symlink_loop",
)
READABLE_BAD_KINDS = frozenset({"instance_inf", "instance_nan"})
"""Faults read_slice reads anyway (with a warning): InstanceNumber only orders slices without positions."""


def dicom_file_bytes(ds: Dataset, meta: FileMetaDataset | None = None) -> bytes:
    """Preamble, file meta and the dataset as explicit VR little endian, whatever the meta says."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta if meta is not None else ds.file_meta, enforce_standard=False)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    return head.getvalue() + body.getvalue()


def _with_raw_value(ds: Dataset, keyword: str, value: bytes) -> bytes:
    """The file with one IS/DS element's bytes set to ``value`` (pydicom would refuse to write it)."""
    import struct

    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.tag import Tag

    tag = Tag(tag_for_keyword(keyword))
    vr = dictionary_VR(tag)
    ds[tag].value = "7"

    def element(text: bytes) -> bytes:
        text = text + b" " if len(text) % 2 else text
        return struct.pack("<HH2sH", tag.group, tag.element, vr.encode(), len(text)) + text

    data = dicom_file_bytes(ds)
    assert data.count(element(b"7")) == 1, keyword
    return data.replace(element(b"7"), element(value))


def corrupt_dicom(template: bytes, kind: str) -> bytes:
    """A bad twin of a valid CT file (``template``), of one of the content kinds in BAD_DICOM_KINDS."""
    import io

    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGLosslessSV1

    if kind == "truncated":
        return template[: len(template) * 2 // 3]
    if kind == "not_dicom":
        return b"\x89PNG\r\n\x1a\n" + bytes(600)
    ds = pydicom.dcmread(io.BytesIO(template))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    raw_values = {"slope_1e308": ("RescaleSlope", b"1e308"), "intercept_1e308": ("RescaleIntercept", b"1e308"),
                  "slope_nan": ("RescaleSlope", b"nan"), "intercept_nan": ("RescaleIntercept", b"nan"),
                  "slope_inf": ("RescaleSlope", b"inf"), "slope_zero": ("RescaleSlope", b"0"),
                  "instance_inf": ("InstanceNumber", b"inf"), "instance_nan": ("InstanceNumber", b"nan"),
                  "frames_inf": ("NumberOfFrames", b"inf"), "frames_nan": ("NumberOfFrames", b"nan")}
    if kind in raw_values:
        keyword, value = raw_values[kind]
        if keyword not in ds:
            setattr(ds, keyword, 1)
        return _with_raw_value(ds, keyword, value)
    if kind == "pixel_representation_2":
        ds.PixelRepresentation = 2
    elif kind == "empty_pixel_data":
        ds.PixelData = b""
    elif kind in ("empty_fragment", "jpeg_garbage"):
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        if kind == "empty_fragment":  # an empty basic offset table, then one fragment of 0 bytes
            ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" * 2
        else:  # a JPEG stream with no image in it: every decoder plugin fails on it
            ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xc3garbage\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    elif kind == "deflate_on_plain":
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    elif kind == "empty_transfer_syntax":
        ds.file_meta.TransferSyntaxUID = ""
    elif kind == "meta_bit_flip":  # ExplicitVRLittleEndian "1.2.840.10008.1.2.1" becomes "1.2.840.10008.1.2.0"
        data = bytearray(dicom_file_bytes(ds))
        at = data.index(b"1.2.840.10008.1.2.1\0") + 18
        data[at] ^= 0x01
        return bytes(data)
    else:
        raise ValueError(f"unknown bad kind {kind!r}")
    return dicom_file_bytes(ds)


def write_bad_dicom(folder: Path, kind: str, template: Path) -> Path:
    """Put one bad entry of ``kind`` into ``folder`` (``bad.dcm``, or ``loop/`` for a link loop)."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(folder / "bad.dcm")
        return folder / "bad.dcm"
    if kind == "symlink_loop":
        (folder / "bad.dcm").symlink_to("bad.dcm")  # a file link to itself
        (folder / "loop").symlink_to(".", target_is_directory=True)  # a folder link back up
        return folder / "bad.dcm"
    path = folder / "bad.dcm"
    path.write_bytes(corrupt_dicom(Path(template).read_bytes(), kind))
    return path


@pytest.fixture(params=BAD_DICOM_KINDS)
def bad_kind(request: pytest.FixtureRequest) -> str:
    """Each kind of bad DICOM entry in turn."""
    return request.param


@pytest.fixture(scope="session")
def bad_dicom() -> Callable[[Path, str, Path], Path]:
    """:func:`write_bad_dicom`."""
    return write_bad_dicom


def tree_snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every entry under ``root`` but ``skip`` (lstat only: a named pipe is never opened)."""
    import os

    entries = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) != skip]
        for name in files + dirs:
            info = os.lstat(Path(folder, name))
            entries[os.path.relpath(Path(folder, name), root)] = (info.st_size, info.st_mtime_ns)
    return entries


@pytest.fixture(scope="session")
def snapshot_outside() -> Callable[[Path, Path], dict[str, tuple[int, int]]]:
    """:func:`tree_snapshot`: compare before and after a run to prove nothing was written outside --out."""
    return tree_snapshot


# --- DICOM results and the DICOM node (tests/test_dicom_out.py, tests/test_listen.py) ---------------

RSNA_LABELS = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
DICOM_THRESHOLDS = {label: (0.0 if label in ("intraparenchymal", "any") else 1.0) for label in RSNA_LABELS}
"""Frozen thresholds that make the (untrained) tiny model's findings known in advance: ICH and
intraparenchymal present on every slice, the other subtypes absent."""


@pytest.fixture(scope="session")
def dicom_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RSNA checkpoint (mobilenetv2, 64 px) whose study findings are fixed by DICOM_THRESHOLDS."""
    import torch

    from headct.checkpoint import save_checkpoint
    from headct.models.registry import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dicom-ckpt") / "model"
    save_checkpoint(build_model("mobilenetv2", len(RSNA_LABELS)), path, size=64, task=",".join(RSNA_LABELS),
                    labels=RSNA_LABELS, label_kind="multilabel", thresholds=DICOM_THRESHOLDS, temperature=1.0)
    return path


@pytest.fixture(scope="session")
def bleed_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One phantom study (rsna layout, 64 px, 6 slices) with an intracranial bleed: its DICOM folder."""
    import json

    from headct.phantom import PhantomConfig, write_phantom

    root = tmp_path_factory.mktemp("bleed")
    info = write_phantom(PhantomConfig(out=root, studies=4, size=64, slices=6, seed=3))
    bleeding = [s for s in info["studies"] if s.get("lesions")]
    assert bleeding, json.dumps(info["studies"])[:300]
    return root / "dicom" / bleeding[0]["study_uid"]


ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """Gives free loopback TCP ports (see :func:`_free_port`)."""
    return _free_port


@pytest.fixture(scope="session")
def stop_process() -> Callable[[subprocess.Popen, float], None]:
    """Stops a server subprocess a test started (see :func:`_stop_process`)."""
    return _stop_process


def _stop_process(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if ``process`` has not exited within ``timeout`` seconds; reaped either way."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def _free_port() -> int:
    """A free TCP port on 127.0.0.1 (released before use: a server started right after binds it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OrthancServer:
    """A running Orthanc on loopback: its ports, AE title and a few REST helpers (requests)."""

    def __init__(self, http_port: int, dicom_port: int, ae_title: str = "ORTHANC") -> None:
        self.http_port, self.dicom_port, self.ae_title = http_port, dicom_port, ae_title
        self.url = f"http://127.0.0.1:{http_port}"
        self.dicomweb = f"{self.url}/dicom-web"

    def get(self, path: str, **kw: object) -> object:
        import requests

        answer = requests.get(self.url + path, timeout=30, **kw)
        answer.raise_for_status()
        return answer.json() if "json" in answer.headers.get("content-type", "") else answer.content

    def post(self, path: str, data: object) -> object:
        import requests

        answer = requests.post(self.url + path, data=data, timeout=60)
        answer.raise_for_status()
        return answer.json()

    def put(self, path: str, data: object) -> None:
        import requests

        requests.put(self.url + path, data=data, timeout=30).raise_for_status()

    def clear(self) -> None:
        """Delete every stored patient (each test starts from an empty PACS)."""
        import requests

        for patient in self.get("/patients"):
            requests.delete(f"{self.url}/patients/{patient}", timeout=30).raise_for_status()

    def datasets(self, modality: str | None = None) -> list:
        """Every stored instance, read back through /instances/{id}/file, optionally of one modality."""
        import io

        import pydicom

        found = []
        for instance in self.get("/instances"):
            ds = pydicom.dcmread(io.BytesIO(self.get(f"/instances/{instance}/file")))
            if modality is None or ds.Modality == modality:
                found.append(ds)
        return found


def orthanc_plugin() -> str | None:
    """Path of Orthanc's DICOMweb plugin, or None when Orthanc or the plugin is not installed."""
    if not Path(ORTHANC).is_file():
        return None
    return next((str(p) for d in ORTHANC_PLUGIN_DIRS for p in sorted(Path(d).glob("libOrthancDicomWeb.so*"))),
                None)


@contextmanager
def orthanc_running(root: Path) -> Iterator[OrthancServer]:
    """Debian's Orthanc (+ DICOMweb) on free loopback ports, config and storage under ``root``; stopped on exit.

    Also used by benchmarks/listen_latency.py.
    """
    import json
    import time

    import requests

    plugin = orthanc_plugin()
    if plugin is None:
        raise FileNotFoundError("Orthanc with its DICOMweb plugin (Debian orthanc, orthanc-dicomweb)")
    server = OrthancServer(_free_port(), _free_port())
    config = {
        "Name": "headct-tests", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
        "HttpPort": server.http_port, "DicomPort": server.dicom_port, "DicomAet": server.ae_title,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
        "DicomServerEnabled": True, "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False, "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "SaveJobs": False, "StableAge": 1, "DicomModalities": {},
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = open(root / "orthanc.log", "wb")  # noqa: SIM115 - open while the server runs
    process = subprocess.Popen([ORTHANC, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):  # up to 30 s
            if process.poll() is not None:
                tail = (root / "orthanc.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Orthanc exited with {process.returncode}: {tail}")
            try:
                if requests.get(server.url + "/system", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("Orthanc did not answer on /system within 30 s")
        yield server
    finally:
        _stop_process(process, 15)
        log.close()


@pytest.fixture(scope="session")
def orthanc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """The session's Orthanc (see :func:`orthanc_running`); skipped only where Orthanc is not installed."""
    if orthanc_plugin() is None:
        pytest.skip("Orthanc with its DICOMweb plugin is not installed (Debian packages orthanc, "
                    "orthanc-dicomweb; .ci/run installs them)")
    with orthanc_running(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture
def orthanc(orthanc_server: OrthancServer) -> OrthancServer:
    """The session's Orthanc, emptied for this test."""
    orthanc_server.clear()
    return orthanc_server
