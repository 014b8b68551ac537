"""The HTTP service: each upload rejection, the same JSON as Predictor.predict, concurrent clients."""

from __future__ import annotations

import io
import socket
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from headct.checkpoint import save_checkpoint
from headct.models import build_model
from headct.predict import Predictor
from headct.serve import ServeLimits, create_app, unsafe_member_name

WriteSeries = Callable[..., tuple[str, list[str], np.ndarray]]
LABELS = ["intraparenchymal", "any"]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    ckpt = tmp_path_factory.mktemp("ckpt") / "model"
    save_checkpoint(build_model("mobilenetv2", len(LABELS)), ckpt, size=32, task="intraparenchymal,any",
                    labels=LABELS, label_kind="multilabel", thresholds={"any": 0.4}, temperature=1.3)
    return Predictor.from_checkpoint(ckpt, device="cpu")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, write_ct_series: WriteSeries) -> Path:
    folder = tmp_path_factory.mktemp("study")
    write_ct_series(folder, slices=3)
    return folder


def _files(folder: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "application/dicom")) for p in sorted(folder.iterdir())]


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _client(predictor: Predictor, **limits: int | float) -> TestClient:
    return TestClient(create_app(predictor, ServeLimits(**limits)))


def test_health_model_and_openapi(predictor: Predictor) -> None:
    client = _client(predictor)
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert info["name"] == "mobilenetv2" and info["labels"] == LABELS
    assert info["thresholds"] == {"intraparenchymal": 0.5, "any": 0.4}
    assert info["windows"] == ["brain", "subdural", "bone"] and info["size"] == 32
    assert info["image_channels"] == 1 and info["input_windows"] is None  # a HU model: no 8-bit windows
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body


def test_files_and_zip_give_the_same_json_as_predict(predictor: Predictor, study: Path) -> None:
    expected = predictor.predict(study)
    client = _client(predictor)
    by_files = client.post("/v1/predict", files=_files(study))
    assert by_files.status_code == 200, by_files.text
    assert by_files.json() == expected
    archive = _zip({f"study/{p.name}": p.read_bytes() for p in sorted(study.iterdir())})
    by_zip = client.post("/v1/predict", files=[("files", ("study.zip", archive, "application/zip"))])
    assert by_zip.status_code == 200, by_zip.text
    assert by_zip.json() == expected
    assert "SECRET" not in by_zip.text and "Doe" not in by_zip.text
    assert len(expected["slices"]) == 3


def test_upload_over_the_size_limit_is_413(predictor: Predictor, study: Path) -> None:
    answer = _client(predictor, max_upload_bytes=4000).post("/v1/predict", files=_files(study))
    assert answer.status_code == 413
    assert "limit" in answer.json()["detail"]


def test_chunked_upload_is_cut_at_the_limit(predictor: Predictor, study: Path) -> None:
    boundary = "headct-test-boundary"
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{p.name}\"\r\n"
             f"Content-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
             for p in sorted(study.iterdir())]

    def chunks():  # no Content-Length: the limit must hold while streaming
        yield from parts
        yield f"--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    answer = _client(predictor, max_upload_bytes=4000).post("/v1/predict", content=chunks(), headers=headers)
    assert answer.status_code == 413
    assert answer.json()["detail"] == "upload is over the limit of 4000 bytes"
    accepted = _client(predictor).post("/v1/predict", content=chunks(), headers=headers)
    assert accepted.status_code == 200, accepted.text


def test_too_many_files_is_413(predictor: Predictor, study: Path) -> None:
    answer = _client(predictor, max_files=2).post("/v1/predict", files=_files(study))
    assert answer.status_code == 413
    archive = _zip({f"{i}.dcm": b"x" for i in range(3)})
    zipped = _client(predictor, max_files=2).post("/v1/predict", files=[("files", ("s.zip", archive, "application/zip"))])
    assert zipped.status_code == 413 and "3 files" in zipped.json()["detail"]


def test_zip_bomb_ratio_and_total_cap_are_413(predictor: Predictor) -> None:
    bomb = _zip({"a.dcm": bytes(2_000_000)})  # 2 MB of zeros deflate ~1000x
    answer = _client(predictor).post("/v1/predict", files=[("files", ("b.zip", bomb, "application/zip"))])
    assert answer.status_code == 413 and "zip bomb" in answer.json()["detail"]
    stored = _zip({"a.dcm": bytes(5000), "b.dcm": bytes(5000)}, zipfile.ZIP_STORED)
    capped = _client(predictor, max_uncompressed_bytes=8000).post(
        "/v1/predict", files=[("files", ("s.zip", stored, "application/zip"))])
    assert capped.status_code == 413 and "10000 bytes" in capped.json()["detail"]


@pytest.mark.parametrize("name", ["../evil.dcm", "/etc/passwd", "a/../../b.dcm", "C:\\x.dcm", "..\\x.dcm"])
def test_unsafe_zip_member_names_are_400(predictor: Predictor, study: Path, name: str) -> None:
    first = sorted(study.iterdir())[0].read_bytes()
    archive = _zip({name: first})
    answer = _client(predictor).post("/v1/predict", files=[("files", ("s.zip", archive, "application/zip"))])
    assert answer.status_code == 400
    assert "zip member" in answer.json()["detail"]


def test_member_name_check() -> None:
    assert unsafe_member_name("study/series/IM001.dcm") is None
    assert unsafe_member_name("a..b/c.dcm") is None  # dots inside a name are fine
    assert unsafe_member_name("../x") and unsafe_member_name("/x") and unsafe_member_name("D:x")


def test_non_dicom_content_and_wrong_media_type_are_415(predictor: Predictor, study: Path) -> None:
    client = _client(predictor)
    files = _files(study) + [("files", ("notes.txt", b"not an image at all" * 20, "text/plain"))]
    answer = client.post("/v1/predict", files=files)
    assert answer.status_code == 415 and "not DICOM" in answer.json()["detail"]
    in_zip = _zip({"x.png": b"\x89PNG\r\n\x1a\n" + bytes(300)})
    assert client.post("/v1/predict", files=[("files", ("s.zip", in_zip, "application/zip"))]).status_code == 415
    raw = client.post("/v1/predict", content=b"{}", headers={"content-type": "application/json"})
    assert raw.status_code == 415


def test_empty_upload_and_two_studies_are_422(predictor: Predictor, study: Path, tmp_path: Path, write_ct_series: WriteSeries) -> None:
    client = _client(predictor)
    empty = client.post("/v1/predict", files={"note": (None, "hello")})
    assert empty.status_code == 422
    other = tmp_path / "other"
    write_ct_series(other, slices=2, seed=3)
    answer = client.post("/v1/predict", files=_files(study) + _files(other))
    assert answer.status_code == 422 and "2 studies" in answer.json()["detail"]
    assert str(tmp_path) not in answer.text


def test_real_server_answers_20_concurrent_clients(predictor: Predictor, study: Path) -> None:
    expected = predictor.predict(study)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(predictor), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        files = _files(study)

        def post(_: int) -> tuple[int, dict]:
            with httpx.Client(timeout=60) as http:
                answer = http.post(f"http://127.0.0.1:{port}/v1/predict", files=files)
                return answer.status_code, answer.json()

        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(post, range(20)))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert [status for status, _ in answers] == [200] * 20
    assert all(body == expected for _, body in answers)


# --- the service under load and abuse (issue 12, item 7) ------------------------------------------

class _Server:
    """The app on a real uvicorn server on a free loopback port (bounded start, stopped on exit)."""

    def __init__(self, app: object, **config: object) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", **config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def _raw_exchange(port: int, request: bytes, answers: int = 1, timeout: float = 30) -> bytes:
    """Send raw bytes on one connection; read until ``answers`` HTTP answers arrived or it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        received = b""
        while received.count(b"HTTP/1.1 ") < answers or not _complete(received):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def _complete(data: bytes) -> bool:
    head, _, body = data.rpartition(b"HTTP/1.1 ")[2].partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), None)
    return length is not None and len(body) >= length


def test_empty_zip_is_422_not_415(predictor: Predictor) -> None:
    answer = _client(predictor).post("/v1/predict", files=[("files", ("s.zip", _zip({}), "application/zip"))])
    assert answer.status_code == 422
    assert answer.json()["detail"] == "the zip holds no files; put the study's DICOM files in it"


def test_too_many_fields_is_413_with_its_own_text(predictor: Predictor) -> None:
    fields = {f"note{i}": (None, "x") for i in range(20)}
    answer = _client(predictor).post("/v1/predict", files=fields)
    assert answer.status_code == 413
    assert answer.json()["detail"] == "too many form fields in the upload; send the files under 'files' only"
    files = _client(predictor, max_files=1).post("/v1/predict", files=[("files", ("a", b"x", "x/y"))] * 2)
    assert files.status_code == 413 and files.json()["detail"] == "too many files in the upload; at most 1"


def test_truncated_multipart_is_400(predictor: Predictor, study: Path) -> None:
    boundary = "headct-test-boundary"
    first = sorted(study.iterdir())[0].read_bytes()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.dcm\"\r\n"
            f"Content-Type: application/dicom\r\n\r\n").encode() + first[: len(first) // 2]
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    answer = _client(predictor).post("/v1/predict", content=body, headers=headers)
    assert answer.status_code == 400
    assert "truncated" in answer.json()["detail"]


def test_zip_over_the_cap_is_refused_before_anything_is_written(predictor: Predictor, study: Path,
                                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the request's folder lands here
    first = sorted(study.iterdir())[0].read_bytes()
    archive = _zip({f"{i}.dcm": first for i in range(40)})  # 40 x ~3 kB declared
    answer = _client(predictor, max_uncompressed_bytes=50_000).post(
        "/v1/predict", files=[("files", ("s.zip", archive, "application/zip"))])
    assert answer.status_code == 413 and "at most 50000" in answer.json()["detail"]
    not_dicom = _zip({"a.dcm": first, "b.dcm": b"\x00" * 200_000})  # compresses 200x+: refused as a bomb
    assert _client(predictor).post("/v1/predict", files=[("files", ("s.zip", not_dicom, "application/zip"))]).status_code == 413
    fake = _zip({"a.dcm": first, "b.dcm": bytes(range(256)) * 400})  # not DICOM: 415 before extraction
    answer = _client(predictor).post("/v1/predict", files=[("files", ("s.zip", fake, "application/zip"))])
    assert answer.status_code == 415 and answer.json()["detail"].startswith("zip member 2 is not DICOM")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing was extracted, and all cleaned up


def test_the_temporary_disk_budget_is_shared_and_released(predictor: Predictor, study: Path) -> None:
    app = create_app(predictor, ServeLimits(max_temp_bytes=20_000))
    client = TestClient(app)
    files = _files(study)  # ~10 kB of body fits
    assert client.post("/v1/predict", files=files).status_code == 200
    assert app.state.budget.used == 0  # released after the request
    app.state.budget.reserve(15_000)  # another upload holds most of it
    busy = client.post("/v1/predict", files=files)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "10"
    app.state.budget.release(15_000)
    assert client.post("/v1/predict", files=files).status_code == 200


def test_a_stalled_upload_is_408(predictor: Predictor) -> None:
    app = create_app(predictor, ServeLimits(upload_idle_s=0.5, upload_timeout_s=5))
    with _Server(app) as server:
        head = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 100000\r\n\r\n--b\r\n")
        answer = _raw_exchange(server.port, head)  # then nothing more: the client stalls
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"too slow" in answer


def test_after_a_500_the_keep_alive_connection_still_answers(predictor: Predictor, study: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Predictor, "predict_study", broken)
    files = [(p.name, p.read_bytes()) for p in sorted(study.iterdir())]
    boundary = "kb"
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{n}\"\r\n\r\n".encode()
                    + data + b"\r\n" for n, data in files) + f"--{boundary}--\r\n".encode()
    post = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with _Server(create_app(predictor)) as server:
        answers = _raw_exchange(server.port, post + health, answers=2)
    first, _, second = answers.partition(b"HTTP/1.1 200")
    assert first.startswith(b"HTTP/1.1 500") and b"internal error" in first and b"boom" not in first
    assert b'{"status":"ok"}' in second


def test_workers_infer_side_by_side(predictor: Predictor, study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers: two requests are inside inference at once (one worker would never overlap them)."""
    inside, peak, lock = [0], [0], threading.Lock()
    original = Predictor.predict_study

    def counting(self: Predictor, study_input: object) -> dict:
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        time.sleep(0.5)
        try:
            return original(self, study_input)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(Predictor, "predict_study", counting)
    second = Predictor(predictor.model, predictor.config, runtime="torch", device="cpu")
    for workers, expected in (([predictor], 1), ([predictor, second], 2)):
        peak[0] = 0
        client = TestClient(create_app(workers))
        with ThreadPoolExecutor(max_workers=4) as pool:
            codes = list(pool.map(lambda _, c=client: c.post("/v1/predict", files=_files(study)).status_code, range(4)))
        assert codes == [200] * 4
        assert peak[0] == expected


def test_kept_results_serve_the_viewer(study: Path, tmp_path: Path) -> None:
    import nibabel as nib
    import torch

    torch.manual_seed(1)  # 64 px: Grad-CAM's last stage has 2x2 cells, so its maps are not all zero
    save_checkpoint(build_model("mobilenetv2", len(LABELS)), tmp_path / "ckpt", size=64, task="intraparenchymal,any",
                    labels=LABELS, label_kind="multilabel")
    predictor = Predictor.from_checkpoint(tmp_path / "ckpt", device="cpu")
    client = _client(predictor)
    answer = client.post("/v1/predict", files=_files(study))
    location = answer.headers["location"]
    view = client.get(location).json()
    assert client.get(view["prediction"]).json() == answer.json() == predictor.predict(study)
    volume = nib.Nifti1Image.from_bytes(client.get(view["volume"]).content)
    assert volume.shape == (40, 40, 3) and volume.get_data_dtype() == np.int16
    assert np.allclose(np.abs(np.diag(volume.affine))[:3], [0.5, 0.5, 5.0])
    single = nib.Nifti1Image.from_bytes(client.get(f"{view['cams']['any']}?only=1").content)
    one = single.get_fdata()
    assert one.shape == (40, 40, 1) and one.max() > 0.5
    assert np.allclose(single.affine[:3, 3] - volume.affine[:3, 3], [0, 0, 5.0])  # placed on slice 1
    cam = nib.Nifti1Image.from_bytes(client.get(view["cams"]["any"]).content)
    assert cam.shape == (40, 40, 3) and cam.get_data_dtype() == np.uint8
    maps = cam.get_fdata()
    assert maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6 and all(maps[..., k].max() > 0.5 for k in range(3))
    assert np.allclose(one[..., 0], maps[..., 1], atol=1.5 / 255)  # one slice alone: the same map
    assert client.get(f"{view['cams']['any']}?only=3").status_code == 404
    assert [r["id"] for r in client.get("/v1/results").json()] == [location.rsplit("/", 1)[1]]
    assert client.get("/v1/results/not-a-real-id-000").status_code == 404
    assert client.get(f"{location}/cam/7.nii").status_code == 404
    assert "SECRET" not in client.get(location).text and "Doe" not in client.get(location).text
    page = client.get("/")
    assert page.status_code == 200 and "/viewer/vendor/niivue.umd.js" in page.text
    assert client.get("/viewer/vendor/niivue.umd.js").status_code == 200
    assert client.get("/docs").status_code == 404  # Swagger would load from a CDN
