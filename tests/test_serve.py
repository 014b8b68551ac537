"""The HTTP service: each upload rejection, the same JSON as Predictor.predict, concurrent clients."""

from __future__ import annotations

import io
import socket
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
