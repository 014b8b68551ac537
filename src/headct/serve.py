"""HTTP service: POST one study's DICOM files (or one zip of them), get the prediction JSON.

``create_app(predictor, limits)`` builds the FastAPI app; ``headct serve`` runs
it with uvicorn. The answer to ``POST /v1/predict`` is exactly what
``Predictor.predict`` returns for the same study; ``POST /v1/predict/dicom``
answers its DICOM SR and Grad-CAM captures (``headct.dicom_out``) as a zip.
Uploads are checked before anything is decoded: total size (413), number of
files (413), zip bombs (declared uncompressed size against the compressed
size and a total cap, 413),
unsafe zip member names (400), content that is not DICOM (415) and uploads that
hold no study or several (422). Every rejection is JSON ``{"detail": "..."}``.

The model is shared by all requests; ``Predictor`` serialises inference with
its own lock, and the work runs in a threadpool so the event loop stays free.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from headct import __version__
from headct.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from headct.predict import Predictor

log = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"
DICOM_MAGIC_OFFSET = 128


@dataclass
class ServeLimits:
    """What one request may send. Defaults fit a thin-slice head CT study."""

    max_upload_bytes: int = 512 * 2**20
    """Request body, multipart framing included (413 above it)."""
    max_files: int = 2000
    """Files in the upload, or members in the zip (413 above it)."""
    max_uncompressed_bytes: int = 2 * 2**30
    """Sum of the zip members' declared uncompressed sizes (413 above it)."""
    max_zip_ratio: float = 200.0
    """Uncompressed / compressed size, per member and for the whole zip (413 above it)."""


def create_app(predictor: Predictor, limits: ServeLimits | None = None) -> FastAPI:
    """The FastAPI app serving ``predictor`` under ``limits``."""
    limits = limits or ServeLimits()
    app = FastAPI(
        title="headct",
        version=__version__,
        description="Stroke and intracranial-hemorrhage classification on head CT.",
    )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    def model_info() -> dict[str, Any]:
        return predictor.describe()

    @app.post("/v1/predict", openapi_extra=_UPLOAD_SCHEMA, response_model=None)
    async def predict(request: Request) -> dict[str, Any]:
        workdir = Path(tempfile.mkdtemp(prefix="headct-serve-"))
        try:
            folder = await _receive_study(request, limits, workdir)
            return await run_in_threadpool(_predict_folder, predictor, folder)
        finally:
            await run_in_threadpool(shutil.rmtree, workdir, True)

    @app.post("/v1/predict/dicom", openapi_extra=_UPLOAD_SCHEMA, response_model=None)
    async def predict_dicom(request: Request) -> Response:
        """The study's DICOM results (SR + Grad-CAM captures, ``headct.dicom_out``) as a zip."""
        from headct.dicom_out import results_zip

        workdir = Path(tempfile.mkdtemp(prefix="headct-serve-"))
        try:
            folder = await _receive_study(request, limits, workdir)
            body = await run_in_threadpool(_predict_folder, predictor, folder, results_zip)
            return Response(body, media_type="application/zip")
        finally:
            await run_in_threadpool(shutil.rmtree, workdir, True)

    return app


def serve_command(args: argparse.Namespace) -> int:
    """``headct serve``: load the checkpoint and run the app with uvicorn."""
    import uvicorn

    import headct

    predictor = headct.load(args.model, runtime=getattr(args, "runtime", "torch"))
    limits = ServeLimits(max_upload_bytes=int(getattr(args, "max_upload_mb", 512) * 2**20),
                         max_files=getattr(args, "max_files", ServeLimits.max_files))
    app = create_app(predictor, limits)
    log.info("serving %s on http://%s:%d (OpenAPI at /docs)", args.model, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
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


async def _receive_study(request: Request, limits: ServeLimits, workdir: Path) -> Path:
    """Check and store the upload under ``workdir/study``; return that folder."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise HTTPException(415, f"send multipart/form-data with DICOM files or one zip, not {content_type or 'no content type'!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_upload_bytes:
        raise HTTPException(413, f"upload of {int(declared)} bytes is over the limit of {limits.max_upload_bytes}")
    parser = MultiPartParser(
        request.headers,
        _limited_stream(request, limits.max_upload_bytes),
        max_files=limits.max_files,
        max_fields=16,
        max_part_size=1 << 20,
    )
    try:
        form = await parser.parse()
    except MultiPartException as err:
        status = 413 if "Too many" in err.message else 400
        raise HTTPException(status, f"{err.message} (at most {limits.max_files} files)" if status == 413 else err.message) from err
    uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
    try:
        return await run_in_threadpool(_store_upload, uploads, limits, workdir)
    finally:
        await form.close()


async def _limited_stream(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The request body, stopped with 413 once it passes ``limit`` bytes (chunked uploads too)."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise HTTPException(413, f"upload is over the limit of {limit} bytes")
        yield chunk


def _store_upload(uploads: list[UploadFile], limits: ServeLimits, workdir: Path) -> Path:
    """Write the uploaded files (or the one zip's members) to ``workdir/study``, all checked."""
    if not uploads:
        raise HTTPException(422, "no files in the upload; send a study's DICOM files or one zip")
    study = workdir / "study"
    study.mkdir()
    if len(uploads) == 1 and _starts_with(uploads[0].file, ZIP_MAGIC):
        zip_path = workdir / "upload.zip"
        with zip_path.open("wb") as out:
            shutil.copyfileobj(uploads[0].file, out)
        stored = extract_zip(zip_path, study, limits)
        zip_path.unlink()
    else:
        stored = []
        for number, upload in enumerate(uploads, start=1):
            target = study / f"{number:05d}.dcm"
            with target.open("wb") as out:
                shutil.copyfileobj(upload.file, out)
            stored.append(target)
    if not stored:
        raise HTTPException(422, "the zip holds no files")
    for number, path in enumerate(stored, start=1):
        if not is_dicom_file(path):
            raise HTTPException(415, f"file {number} of the upload is not DICOM (no 'DICM' marker at byte 128)")
    return study


def extract_zip(zip_path: Path, dest: Path, limits: ServeLimits) -> list[Path]:
    """Extract a zip's files to ``dest`` under new numbered names, after checking every member.

    Raises ``HTTPException`` (400 unsafe names or a corrupt zip, 413 sizes).
    Members are written as ``dest/00001.dcm``...; their own names are only
    checked, never used as paths, so nothing can land outside ``dest``.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as err:
        raise HTTPException(400, f"the upload is not a readable zip ({err})") from err
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        check_zip_members(members, limits)
        written = []
        for number, info in enumerate(members, start=1):
            target = dest / f"{number:05d}.dcm"
            try:
                with archive.open(info) as src, target.open("wb") as out:
                    _copy_at_most(src, out, info.file_size)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as err:
                raise HTTPException(400, f"zip member {info.filename!r} cannot be read ({err})") from err
            written.append(target)
    return written


def check_zip_members(members: list[zipfile.ZipInfo], limits: ServeLimits) -> None:
    """Reject unsafe names, links, too many members and zip bombs, from the declared sizes."""
    if len(members) > limits.max_files:
        raise HTTPException(413, f"the zip holds {len(members)} files; at most {limits.max_files}")
    for info in members:
        fault = unsafe_member_name(info.filename)
        if fault:
            raise HTTPException(400, f"zip member {info.filename!r}: {fault}")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise HTTPException(400, f"zip member {info.filename!r} is a symbolic link")
    total = sum(info.file_size for info in members)
    if total > limits.max_uncompressed_bytes:
        raise HTTPException(413, f"the zip unpacks to {total} bytes; at most {limits.max_uncompressed_bytes}")
    compressed = sum(info.compress_size for info in members)
    if total > limits.max_zip_ratio * max(compressed, 1):
        raise HTTPException(413, f"the zip unpacks {total / max(compressed, 1):.0f}x its size; at most {limits.max_zip_ratio:g}x (zip bomb?)")
    for info in members:
        if info.file_size > limits.max_zip_ratio * max(info.compress_size, 1):
            raise HTTPException(413, f"zip member {info.filename!r} unpacks {info.file_size / max(info.compress_size, 1):.0f}x its size; at most {limits.max_zip_ratio:g}x (zip bomb?)")


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
        handle.seek(DICOM_MAGIC_OFFSET)
        return handle.read(4) == b"DICM"


def _starts_with(handle: Any, magic: bytes) -> bool:
    head = handle.read(len(magic))
    handle.seek(0)
    return head == magic


def _copy_at_most(src: Any, out: Any, declared: int) -> None:
    """Copy ``src`` to ``out``; refuse more bytes than the member declared (zipfile checks too)."""
    copied = 0
    while chunk := src.read(1 << 20):
        copied += len(chunk)
        if copied > declared:
            raise HTTPException(413, "a zip member unpacks to more than it declares")
        out.write(chunk)


# --- predicting ------------------------------------------------------------

def _predict_folder(predictor: Predictor, folder: Path, make: Callable[[Predictor, Path], Any] | None = None) -> Any:
    """Read the stored study and predict it (or ``make`` its answer); reading errors become 422 without server paths."""
    try:
        return make(predictor, folder) if make else predictor.predict(folder)
    except InputError as err:
        fault = err.fault.replace(str(folder), "upload")
        raise HTTPException(422, f"the upload cannot be used: {fault}") from err
