"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@pytest.fixture(scope="session")
def write_ct_series() -> Callable[..., tuple[str, list[str], np.ndarray]]:
    """Writer of small CT DICOM series that carry patient identifiers (which no output may echo)."""
    return _write_ct_series


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RSNA-style cache (see :func:`_tiny_cache`), one per test module."""
    return _tiny_cache(tmp_path_factory.mktemp("cache"))


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
    import subprocess
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
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
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
