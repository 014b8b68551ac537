"""HTTP service and browser viewer: POST one study's DICOM files (or one zip), get the prediction JSON.

``create_app(predictors, limits)`` builds the FastAPI app; ``headct serve`` runs
it with uvicorn. The answer to ``POST /v1/predict`` is exactly what
``Predictor.predict`` returns for the same study; its ``Location`` header names
the kept result (``/v1/results/<id>``) that the viewer at ``GET /`` shows: the
analysed series as NIfTI (int16 HU with spacing), a Grad-CAM volume per class,
the same prediction JSON (see ``headct.viewer``). Every page asset is served
from the package, so the viewer works without internet; FastAPI's Swagger and
ReDoc pages load from a CDN and are therefore off: the schema is at ``/openapi.json``.
``POST /v1/predict/dicom`` answers the study's DICOM SR and Grad-CAM captures
(``headct.dicom_out``) as a zip.
Uploads are checked before anything is decoded: total size (413), number of
files (413), zip bombs (declared uncompressed size against the compressed
size and a total cap, 413),
unsafe zip member names (400), content that is not DICOM (415) and uploads that
hold no study or several (422). Every rejection is JSON ``{"detail": "..."}``.

Uploads are checked before anything is decoded: total size (413), number of
files (413), zip bombs (declared uncompressed size against the compressed size
and a per-request cap, 413), unsafe zip member names (400), content that is not
DICOM (415, zip members sniffed before any is written), a truncated multipart
body (400), uploads that hold no study or several (422), an upload that stalls
or takes longer than its deadline (408). Temporary disk is reserved per
request against a server-wide budget (503 with Retry-After when it is spent).
Every rejection is JSON ``{"detail": "..."}``; an unexpected error is a 500
that keeps the connection open.

Inference runs on a pool of predictors (``--workers``, each its own model and
share of the CPU threads): as many requests are inferred side by side as there
are workers; reading and checking uploads is never serialised.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import queue
import re
import shutil
import stat
import tempfile
import threading
import zipfile
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from headct import __version__
from headct.errors import InputError
from headct.viewer import STATIC_DIR
from headct.viewer.store import VOLUME_FILE, ResultStore

if TYPE_CHECKING:  # pragma: no cover
    from headct.io.volume import Volume
    from headct.predict import Predictor, StudyInput

log = logging.getLogger(__name__)

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty zip's end record
DICOM_MAGIC_OFFSET = 128
RESULT_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


@dataclass
class ServeLimits:
    """What one request may send, and what all requests may hold. Defaults fit a thin-slice head CT study."""

    max_upload_bytes: int = 512 * 2**20
    """Request body, multipart framing included (413 above it)."""
    max_files: int = 2000
    """Files in the upload, or members in the zip (413 above it)."""
    max_uncompressed_bytes: int = 1 * 2**30
    """Sum of the zip members' declared uncompressed sizes (413 above it, before anything is extracted)."""
    max_zip_ratio: float = 200.0
    """Uncompressed / compressed size, per member and for the whole zip (413 above it)."""
    max_temp_bytes: int = 4 * 2**30
    """Temporary disk all requests together may hold (503 when a request's share does not fit)."""
    upload_timeout_s: float = 300.0
    """The whole body must arrive within this (408 after it)."""
    upload_idle_s: float = 30.0
    """Longest pause between two chunks of the body (408 after it)."""


class PredictorPool:
    """Predictors that serve requests side by side: each infers one request at a time."""

    def __init__(self, predictors: Sequence[Predictor]) -> None:
        if not predictors:
            raise ValueError("a predictor pool needs at least one predictor")
        self.predictors = list(predictors)
        self._free: queue.SimpleQueue[Predictor] = queue.SimpleQueue()
        for predictor in self.predictors:
            self._free.put(predictor)

    @property
    def first(self) -> Predictor:
        return self.predictors[0]

    @contextmanager
    def lease(self) -> Iterator[Predictor]:
        """A free predictor for the length of the block (waits for one)."""
        predictor = self._free.get()
        try:
            yield predictor
        finally:
            self._free.put(predictor)


class DiskBudget:
    """Bytes of temporary disk that requests may reserve at once (thread-safe)."""

    def __init__(self, total: int) -> None:
        self.total = int(total)
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> bool:
        """Reserve ``size`` bytes; False when they do not fit now."""
        with self._lock:
            if self.used + size > self.total:
                return False
            self.used += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.used = max(self.used - size, 0)


@dataclass
class _Request:
    """One upload's temporary folder and the disk it reserved."""

    workdir: Path
    budget: DiskBudget
    reserved: int = 0

    def reserve(self, size: int) -> None:
        if not self.budget.reserve(size):
            raise HTTPException(503, "the server's temporary disk is in use by other uploads; retry shortly",
                                headers={"Retry-After": "10"})
        self.reserved += size

    def release(self) -> None:
        self.budget.release(self.reserved)
        self.reserved = 0


def create_app(predictors: Predictor | Sequence[Predictor], limits: ServeLimits | None = None,
               store: ResultStore | None = None) -> FastAPI:
    """The FastAPI app serving ``predictors`` (one, or a pool) under ``limits``, keeping results in ``store``."""
    limits = limits or ServeLimits()
    pool = PredictorPool([predictors] if not isinstance(predictors, Sequence) else predictors)
    store = store or ResultStore()
    budget = DiskBudget(limits.max_temp_bytes)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()  # the kept studies go with the server

    app = FastAPI(
        title="headct",
        version=__version__,
        description="Stroke and intracranial-hemorrhage classification on head CT. "
                    "The viewer is at /; this schema is at /openapi.json (no Swagger page: it would need a CDN).",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.pool = pool
    app.state.budget = budget

    @app.middleware("http")
    async def errors_keep_the_connection(request: Request, call_next: Any) -> Response:
        # an exception escaping to uvicorn resets a keep-alive connection; answer 500 here instead
        try:
            return await call_next(request)
        except Exception:  # noqa: BLE001 - the one place every unexpected error becomes a 500
            log.exception("internal error answering %s %s", request.method, request.url.path)
            return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    def model_info() -> dict[str, Any]:
        return pool.first.describe()

    @app.post("/v1/predict", openapi_extra=_UPLOAD_SCHEMA, response_model=None)
    async def predict(request: Request) -> JSONResponse:
        job = _Request(Path(tempfile.mkdtemp(prefix="headct-serve-")), budget)
        try:
            folder = await _receive_study(request, limits, job)
            result, result_id = await run_in_threadpool(_predict_and_keep, pool, store, folder)
        finally:
            await run_in_threadpool(shutil.rmtree, job.workdir, True)
            job.release()
        return JSONResponse(result, headers={"Location": f"/v1/results/{result_id}"})

    @app.post("/v1/predict/dicom", openapi_extra=_UPLOAD_SCHEMA, response_model=None)
    async def predict_dicom(request: Request) -> Response:
        """The study's DICOM results (SR + Grad-CAM captures, ``headct.dicom_out``) as a zip."""
        job = _Request(Path(tempfile.mkdtemp(prefix="headct-serve-")), budget)
        try:
            folder = await _receive_study(request, limits, job)
            body = await run_in_threadpool(_dicom_results, pool, folder)
        finally:
            await run_in_threadpool(shutil.rmtree, job.workdir, True)
            job.release()
        return Response(body, media_type="application/zip")

    @app.get("/v1/results")
    def results() -> list[dict[str, Any]]:
        return store.listing()

    @app.get("/v1/results/{result_id}")
    def result_view(result_id: str) -> dict[str, Any]:
        stored = _stored(store, result_id)
        return {**stored.summary(), "volume": f"/v1/results/{result_id}/volume.nii",
                "prediction": f"/v1/results/{result_id}/prediction.json",
                "cams": {label: f"/v1/results/{result_id}/cam/{number}.nii"
                         for number, label in enumerate(stored.result["model"]["labels"])}}

    @app.get("/v1/results/{result_id}/prediction.json")
    def result_prediction(result_id: str) -> dict[str, Any]:
        return _stored(store, result_id).result

    @app.get("/v1/results/{result_id}/volume.nii")
    def result_volume(result_id: str) -> FileResponse:
        return FileResponse(_stored(store, result_id).folder / VOLUME_FILE, media_type="application/octet-stream")

    @app.get("/v1/results/{result_id}/cam/{number}.nii")
    async def result_cam(result_id: str, number: int, only: int | None = None) -> FileResponse:
        """Grad-CAM volume of class ``number``; ``?only=K``: just slice K's map (fast, for the first view)."""
        stored = _stored(store, result_id)
        labels = stored.result["model"]["labels"]
        if not 0 <= number < len(labels):
            raise HTTPException(404, f"no class {number}; the model has {len(labels)}")
        try:
            path = await run_in_threadpool(_class_maps_file, pool, store, stored, labels[number], only)
        except ValueError as err:  # a slice outside the shown series
            raise HTTPException(404, str(err)) from err
        return FileResponse(path, media_type="application/octet-stream")

    @app.get("/", include_in_schema=False)
    def viewer_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/viewer", StaticFiles(directory=STATIC_DIR), name="viewer")
    return app


def serve_command(args: argparse.Namespace) -> int:
    """``headct serve``: load the checkpoint (once per worker) and run the app with uvicorn."""
    import uvicorn

    import headct

    workers = max(int(getattr(args, "workers", 1) or 1), 1)
    runtime = getattr(args, "runtime", "torch")
    threads = max((os.cpu_count() or 1) // workers, 1)
    import torch

    torch.set_num_threads(threads)  # Grad-CAM runs in torch whatever the runtime; more threads than cores stall
    options = {"threads": threads} if runtime == "onnx" else {}
    predictors = [headct.load(args.model, runtime=runtime, **options) for _ in range(workers)]
    for predictor in predictors:
        predictor.load_explainer()  # the viewer's first Grad-CAM should not wait for a checkpoint load
    limits = ServeLimits(max_upload_bytes=int(getattr(args, "max_upload_mb", 512) * 2**20),
                         max_files=getattr(args, "max_files", ServeLimits.max_files),
                         max_temp_bytes=int(getattr(args, "max_temp_mb", ServeLimits.max_temp_bytes / 2**20) * 2**20),
                         upload_timeout_s=getattr(args, "upload_timeout", ServeLimits.upload_timeout_s))
    store = ResultStore(ttl_s=getattr(args, "keep_results_s", 3600.0))
    app = create_app(predictors, limits, store)
    log.info("serving %s on http://%s:%d with %d worker(s) (viewer at /)", args.model, args.host, args.port, workers)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info",
                timeout_keep_alive=int(getattr(args, "keep_alive_s", 5)))
    print(f"headct serve stopped (was http://{args.host}:{args.port})")
    return 0


# --- receiving an upload ---------------------------------------------------

_UPLOAD_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One study: its DICOM files, or a single zip of them.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["files"],
                }
            }
        },
    }
}


async def _receive_study(request: Request, limits: ServeLimits, job: _Request) -> Path:
    """Check and store the upload under ``job.workdir/study``; return that folder."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise HTTPException(415, f"send multipart/form-data with DICOM files or one zip, not {content_type or 'no content type'!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_upload_bytes:
        raise HTTPException(413, f"upload of {int(declared)} bytes is over the limit of {limits.max_upload_bytes}")
    # the body is spooled to disk as it arrives: reserve what it may take before reading it
    job.reserve(int(declared) if declared is not None and declared.isdigit() else limits.max_upload_bytes)
    body = _BodyTail()
    parser = MultiPartParser(
        request.headers,
        _limited_stream(request, limits, body),
        max_files=limits.max_files,
        max_fields=16,
        max_part_size=1 << 20,
    )
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise HTTPException(*_multipart_fault(err.message, limits)) from err
    try:
        boundary = _boundary(content_type)
        if boundary and not body.ends_with_boundary(boundary):
            raise HTTPException(400, "the multipart body is truncated (it does not end with its closing boundary)")
        uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        return await run_in_threadpool(_store_upload, uploads, limits, job)
    finally:
        await form.close()


def _multipart_fault(message: str, limits: ServeLimits) -> tuple[int, str]:
    """Status and text for a multipart parser error: 413 for too many files or fields, else 400."""
    if message.startswith("Too many files"):
        return 413, f"too many files in the upload; at most {limits.max_files}"
    if message.startswith("Too many fields"):
        return 413, "too many form fields in the upload; send the files under 'files' only"
    return 400, f"the multipart body cannot be read ({message})"


def _boundary(content_type: str) -> str | None:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    return match.group(1) if match else None


class _BodyTail:
    """The last bytes of the body seen so far: enough to tell whether it ended with its closing boundary."""

    KEEP = 256

    def __init__(self) -> None:
        self.tail = b""

    def add(self, chunk: bytes) -> None:
        self.tail = (self.tail + chunk)[-self.KEEP:]

    def ends_with_boundary(self, boundary: str) -> bool:
        return self.tail.rstrip(b"\r\n \t").endswith(f"--{boundary}--".encode("latin-1"))


async def _limited_stream(request: Request, limits: ServeLimits, body: _BodyTail) -> AsyncGenerator[bytes, None]:
    """The request body, stopped with 413 past the size limit (chunked uploads too) and 408 when it is too slow."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.upload_timeout_s
    chunks = request.stream().__aiter__()
    received = 0
    while True:
        wait = min(deadline - loop.time(), limits.upload_idle_s)
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), timeout=max(wait, 0.0))
        except StopAsyncIteration:
            return
        except TimeoutError as err:
            raise HTTPException(408, "the upload was too slow: send the whole body within "
                                     f"{limits.upload_timeout_s:g} s, pausing at most {limits.upload_idle_s:g} s",
                                headers={"Connection": "close"}) from err
        received += len(chunk)
        if received > limits.max_upload_bytes:
            raise HTTPException(413, f"upload is over the limit of {limits.max_upload_bytes} bytes")
        body.add(chunk)
        yield chunk


def _store_upload(uploads: list[UploadFile], limits: ServeLimits, job: _Request) -> Path:
    """Write the uploaded files (or the one zip's members) to ``job.workdir/study``, all checked."""
    if not uploads:
        raise HTTPException(422, "no files in the upload; send a study's DICOM files or one zip")
    study = job.workdir / "study"
    study.mkdir()
    if len(uploads) == 1 and _starts_with(uploads[0].file, ZIP_MAGICS):
        stored = extract_zip(uploads[0].file, study, limits, job)
    else:
        stored = []
        for number, upload in enumerate(uploads, start=1):
            if not _has_dicom_marker(upload.file):
                raise HTTPException(415, f"file {number} of the upload is not DICOM (no 'DICM' marker at byte 128)")
            target = study / f"{number:05d}.dcm"
            with target.open("wb") as out:
                shutil.copyfileobj(upload.file, out)
            stored.append(target)
    return study


def extract_zip(source: Any, dest: Path, limits: ServeLimits, job: _Request | None = None) -> list[Path]:
    """Extract a zip's files (a path or an open binary file) to ``dest`` under new numbered names.

    Every member is checked first: names, links, count and declared sizes
    (400, 413), then that each starts as DICOM (415), then the declared total
    is reserved on ``job``'s disk budget (503): nothing is written for a zip
    that would be refused. Members land as ``dest/00001.dcm``...; their own
    names are only checked, never used as paths, so nothing can land outside ``dest``.
    """
    try:
        archive = zipfile.ZipFile(source)
    except zipfile.BadZipFile as err:
        raise HTTPException(400, f"the upload is not a readable zip ({err})") from err
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if not members:
            raise HTTPException(422, "the zip holds no files; put the study's DICOM files in it")
        check_zip_members(members, limits)
        for number, info in enumerate(members, start=1):
            with _zip_member(archive, info) as src:
                if not _has_dicom_marker(src, rewind=False):
                    raise HTTPException(415, f"zip member {number} is not DICOM (no 'DICM' marker at byte 128)")
        if job is not None:
            job.reserve(sum(info.file_size for info in members))
        written = []
        for number, info in enumerate(members, start=1):
            target = dest / f"{number:05d}.dcm"
            with _zip_member(archive, info) as src, target.open("wb") as out:
                _copy_at_most(src, out, info.file_size)
            written.append(target)
    return written


@contextmanager
def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[Any]:
    """An open zip member; a member that cannot be read is 400 naming its number, not its name."""
    try:
        with archive.open(info) as src:
            yield src
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as err:
        raise HTTPException(400, f"a zip member cannot be read ({type(err).__name__})") from err


def check_zip_members(members: list[zipfile.ZipInfo], limits: ServeLimits) -> None:
    """Reject unsafe names, links, too many members and zip bombs, from the declared sizes."""
    if len(members) > limits.max_files:
        raise HTTPException(413, f"the zip holds {len(members)} files; at most {limits.max_files}")
    for number, info in enumerate(members, start=1):  # numbers, not names: names may identify the patient
        fault = unsafe_member_name(info.filename)
        if fault:
            raise HTTPException(400, f"zip member {number}: {fault}")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise HTTPException(400, f"zip member {number} is a symbolic link")
    total = sum(info.file_size for info in members)
    if total > limits.max_uncompressed_bytes:
        raise HTTPException(413, f"the zip unpacks to {total} bytes; at most {limits.max_uncompressed_bytes}")
    compressed = sum(info.compress_size for info in members)
    if total > limits.max_zip_ratio * max(compressed, 1):
        raise HTTPException(413, f"the zip unpacks {total / max(compressed, 1):.0f}x its size; at most {limits.max_zip_ratio:g}x (zip bomb?)")
    for number, info in enumerate(members, start=1):
        if info.file_size > limits.max_zip_ratio * max(info.compress_size, 1):
            raise HTTPException(413, f"zip member {number} unpacks {info.file_size / max(info.compress_size, 1):.0f}x its size; at most {limits.max_zip_ratio:g}x (zip bomb?)")


_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_member_name(name: str) -> str | None:
    """Why a zip member name is unsafe (absolute, a drive, '..', NUL), or None when it is fine."""
    if not name:
        return "empty name"
    if "\x00" in name:
        return "NUL in the name"
    if name.startswith(("/", "\\")):
        return "absolute path"
    if _DRIVE.match(name):
        return "path with a drive letter"
    if any(part == ".." for part in re.split(r"[\\/]", name)):
        return "path leaves the archive ('..')"
    return None


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` has the DICOM Part 10 marker ('DICM' after the 128-byte preamble)."""
    with path.open("rb") as handle:
        return _has_dicom_marker(handle, rewind=False)


def _has_dicom_marker(handle: Any, rewind: bool = True) -> bool:
    """Whether an open binary file starts as DICOM Part 10; rewinds it when asked."""
    head = handle.read(DICOM_MAGIC_OFFSET + 4)
    if rewind:
        handle.seek(0)
    return head[DICOM_MAGIC_OFFSET:] == b"DICM"


def _starts_with(handle: Any, magics: tuple[bytes, ...]) -> bool:
    head = handle.read(max(len(m) for m in magics))
    handle.seek(0)
    return any(head.startswith(m) for m in magics)


def _copy_at_most(src: Any, out: Any, declared: int) -> None:
    """Copy ``src`` to ``out``; refuse more bytes than the member declared (zipfile checks too)."""
    copied = 0
    while chunk := src.read(1 << 20):
        copied += len(chunk)
        if copied > declared:
            raise HTTPException(413, "a zip member unpacks to more than it declares")
        out.write(chunk)


# --- predicting and the viewer's data ----------------------------------------

def _predict_and_keep(pool: PredictorPool, store: ResultStore, folder: Path) -> tuple[dict[str, Any], str]:
    """Read the stored study, predict it on a free worker, keep it for the viewer; 422 for unusable input."""
    from headct.predict import read_studies

    try:
        studies = read_studies(folder)
        if len(studies) != 1:
            raise InputError(folder, f"holds {len(studies)} studies; send one study per request")
        study = studies[0]
        with pool.lease() as predictor:
            result = predictor.predict_study(study)
    except InputError as err:
        raise _unusable(err, folder) from err
    return result, store.add(result, _shown_volume(study))


def _dicom_results(pool: PredictorPool, folder: Path) -> bytes:
    """The stored study's DICOM SR and captures as a zip, made on a free worker; 422 for unusable input."""
    # imported here: highdicom comes with the dicom extra, which the rest of the service does not need
    from headct.dicom_out import results_zip

    try:
        with pool.lease() as predictor:
            return results_zip(predictor, folder)
    except InputError as err:
        raise _unusable(err, folder) from err


def _unusable(err: InputError, folder: Path) -> HTTPException:
    """A 422 for an upload that cannot be used, naming no server path."""
    return HTTPException(422, f"the upload cannot be used: {err.fault.replace(str(folder), 'upload')}")


def _shown_volume(study: StudyInput) -> Volume:
    """The series the viewer shows: the study's longest."""
    return max(study.volumes, key=lambda volume: volume.num_slices)


def _class_maps_file(pool: PredictorPool, store: ResultStore, stored: Any, label: str, only: int | None) -> Path:
    """The stored result's Grad-CAM volume of ``label`` (or of one slice), computed on a free worker once."""
    def compute(volume: Volume, name: str, positions: Sequence[int] | None) -> Any:
        with pool.lease() as predictor:
            return predictor.class_maps(volume, name, positions)

    return store.cam_path(stored, label, compute, only)


def _stored(store: ResultStore, result_id: str) -> Any:
    stored = store.get(result_id) if RESULT_ID.match(result_id) else None
    if stored is None:
        raise HTTPException(404, "no such result (results are kept for a limited time)")
    return stored
