"""A DICOM node: CT studies in by C-STORE, results (SR + secondary captures) out by C-STORE / STOW-RS.

``headct listen --model CKPT --ae-title HEADCT --port 11112 --spool DIR
[--send-to AET@HOST:PORT] [--stow URL] [--quiet-seconds 10]`` runs a pynetdicom
Storage SCP (and Verification, C-ECHO):

- CT Image Storage is accepted, uncompressed or in any transfer syntax pydicom
  can decode here (JPEG, JPEG-LS, JPEG 2000, RLE with the pylibjpeg plugins);
  any other storage SOP class gets the C-STORE status 0x0122 (Refused: SOP
  Class not supported). An instance without usable
  UIDs or pixel data is logged by SOP Instance UID, answered 0xA900 and skipped.
- Each instance is written to ``DIR/incoming/<study>/<series>/<sop>.dcm``
  (temporary file, fsync, rename, fsync of the folder) *before* the store is
  acknowledged, so an acknowledged instance survives a crash.
- A study is complete once no instance of it has arrived for the quiet period;
  it is then moved to ``DIR/processing/`` and handed to the one worker thread
  of the model, so predictions never block association handling.
- The worker predicts it, builds the DICOM results (``headct.dicom_out``), sends
  them to ``--send-to`` by C-STORE and/or to ``--stow`` by STOW-RS
  (dicomweb-client) and deletes the spooled study. A study whose results could
  not be sent stays in ``processing/`` and is tried again after 30 s, doubling
  up to 15 min (and on the next start); one that cannot be read is moved to
  ``failed/``.
- On start, spooled studies are resumed: ``processing/`` ones at once,
  ``incoming/`` ones after a fresh quiet period (the rest of the study may
  still be on its way).

Logs name studies by a hash of the Study Instance UID and instances by their
SOP Instance UID, never by a patient attribute.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import queue
import re
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from headct.errors import InputError
from headct.io.privacy import short_hash

if TYPE_CHECKING:
    from headct.predict import Predictor

log = logging.getLogger(__name__)

ACCEPTED_SOP_CLASSES = (CTImageStorage,)
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
DATASET_DOES_NOT_MATCH = 0xA900
OUT_OF_RESOURCES = 0xA700
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_POLL_SECONDS = 0.2
RETRY_SECONDS = 30.0
MAX_RETRY_SECONDS = 900.0


@dataclass
class Destination:
    """A C-STORE destination, ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AET@HOST:PORT`` → Destination; ValueError naming the expected form otherwise.

        The AE title is 1-16 printable ASCII characters without a backslash (DICOM's AE VR) or an
        ``@``, not all spaces; the host a name, an IPv4 address or a bracketed IPv6 one; the port 1-65535.
        """
        match = re.fullmatch(r"([ -?A-\[\]-~]{1,16})@([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})", text)
        if not match or not match[1].strip() or not 1 <= int(match[3]) <= 65535:
            raise ValueError(f"--send-to must be AET@HOST:PORT (AE title 1-16 characters, port 1-65535), "
                             f"got {text!r}")
        return cls(match[1].strip(), match[2].strip("[]"), int(match[3]))


# --- the spool -------------------------------------------------------------------

class Spool:
    """Received instances on disk: ``incoming/`` (being received), ``processing/``, ``failed/``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        for name in ("incoming", "processing", "failed", "tmp"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._last_seen: dict[str, float] = {}

    def resume(self) -> list[Path]:
        """Studies left by an earlier run: claimed ones to process now; incoming ones wait a quiet period."""
        now = time.monotonic()
        with self._lock:
            for study in (self.root / "incoming").iterdir():
                if study.is_dir():
                    self._last_seen[study.name] = now
        for leftover in (self.root / "tmp").iterdir():  # a write the crash interrupted, never acknowledged
            leftover.unlink(missing_ok=True)
        return sorted(p for p in (self.root / "processing").iterdir() if p.is_dir())

    def store(self, encoded: bytes, study_uid: str, series_uid: str, sop_uid: str) -> None:
        """Write one instance durably (fsync, rename, fsync of its folder); then it may be acknowledged."""
        tmp = self.root / "tmp" / f"{sop_uid}.{threading.get_ident()}.part"
        with open(tmp, "wb") as handle:
            handle.write(encoded)
            handle.flush()
            os.fsync(handle.fileno())
        with self._lock:
            folder = self.root / "incoming" / study_uid / series_uid
            folder.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, folder / f"{sop_uid}.dcm")
            _fsync_dir(folder)
            self._last_seen[study_uid] = time.monotonic()

    def claim_quiet(self, quiet_seconds: float) -> list[Path]:
        """Studies with no instance for ``quiet_seconds``, moved to ``processing/`` (unique names)."""
        now = time.monotonic()
        claimed = []
        with self._lock:
            for study_uid, seen in list(self._last_seen.items()):
                if now - seen < quiet_seconds:
                    continue
                del self._last_seen[study_uid]
                target = self.root / "processing" / f"{study_uid}.{time.time_ns()}"
                os.replace(self.root / "incoming" / study_uid, target)
                claimed.append(target)
            if claimed:
                _fsync_dir(self.root / "incoming")
                _fsync_dir(self.root / "processing")
        return claimed

    def receiving(self) -> int:
        """How many studies are still within their quiet period."""
        with self._lock:
            return len(self._last_seen)

    def finish(self, study: Path) -> None:
        """A study whose results were delivered: remove it."""
        shutil.rmtree(study, ignore_errors=True)

    def fail(self, study: Path) -> None:
        """A study that cannot be read: keep it aside in ``failed/``, never retried."""
        os.replace(study, self.root / "failed" / study.name)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- sending results -------------------------------------------------------------

class SendError(RuntimeError):
    """Results could not be delivered (the study stays spooled)."""


def send_c_store(datasets: Sequence[Dataset], destination: Destination, calling_ae_title: str) -> None:
    """Send the datasets in one association; SendError unless every one is stored with success."""
    ae = AE(ae_title=calling_ae_title)
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise SendError(f"no association with {destination.ae_title}@{destination.host}:{destination.port}")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code not in (0x0000, 0xB000, 0xB007, 0xB006):  # success, or stored with a warning
                raise SendError(f"C-STORE of {ds.SOPInstanceUID} answered {code if code is None else hex(code)}")
    finally:
        assoc.release()


def send_stow(datasets: Sequence[Dataset], url: str) -> None:
    """STOW-RS the datasets to a DICOMweb service (dicomweb-client); SendError on failure."""
    from dicomweb_client.api import DICOMwebClient

    try:
        DICOMwebClient(url=url).store_instances(list(datasets))
    except Exception as err:  # requests' HTTPError / ConnectionError: the service said no or is away
        raise SendError(f"STOW-RS failed: {type(err).__name__}") from err


# --- the node ------------------------------------------------------------------------

class Node:
    """The Storage SCP, its spool, and the worker thread that predicts complete studies."""

    def __init__(self, predictor: Predictor, spool: str | Path, *, ae_title: str = "HEADCT", host: str = "0.0.0.0",
                 port: int = 11112, quiet_seconds: float = 10.0, send_to: Destination | None = None,
                 stow: str | None = None, retry_seconds: float = RETRY_SECONDS) -> None:
        self.predictor = predictor
        self.spool = Spool(spool)
        self.ae_title, self.host, self.port = ae_title, host, port
        self.quiet_seconds = quiet_seconds
        self.send_to, self.stow = send_to, stow
        self.retry_seconds = retry_seconds
        self.delivered: deque[dict[str, Any]] = deque(maxlen=1000)  # recent: key, sop uids sent, when (monotonic)
        self._retries: dict[Path, tuple[float, float]] = {}  # study folder -> (due, next delay); _lock
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._pending = 0  # studies queued or being processed; _lock
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self._lock = threading.Lock()

    def start(self) -> Node:
        """Resume the spool, start the worker, the quiet-period watcher and the SCP (non-blocking)."""
        for study in self.spool.resume():
            log.info("resuming spooled study %s", _study_key(study))
            self._enqueue(study)
        self._threads = [threading.Thread(target=self._work, name="headct-predict", daemon=True),
                         threading.Thread(target=self._watch, name="headct-quiet", daemon=True)]
        for thread in self._threads:
            thread.start()
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = 0
        ae.require_called_aet = True  # an association addressed to another AE title is rejected
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:  # accept all, refuse non-CT with a status
            if context.abstract_syntax not in ACCEPTED_SOP_CLASSES:
                ae.add_supported_context(context.abstract_syntax)
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, decodable_transfer_syntaxes())
        handlers = [(evt.EVT_C_ECHO, lambda event: SUCCESS), (evt.EVT_C_STORE, self._on_store)]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]
        log.info("listening as %s on %s:%d; spool %s", self.ae_title, self.host, self.port, self.spool.root)
        return self

    def stop(self) -> None:
        """Stop accepting associations, let the worker finish the study it is on, stop the threads."""
        if self._server is not None:
            self._server.shutdown()
        self._stop.set()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=120)

    def idle(self) -> bool:
        """Nothing received but unprocessed, nothing queued or being predicted, no delivery to retry."""
        with self._lock:
            busy = self._pending > 0 or bool(self._retries)
        return not busy and self.spool.receiving() == 0

    def _enqueue(self, study: Path) -> None:
        with self._lock:
            self._pending += 1
        self._queue.put(study)

    # --- receiving ---

    def _on_store(self, event: Any) -> int:
        """C-STORE: check the instance, spool it durably, then acknowledge."""
        sop_class = str(event.request.AffectedSOPClassUID)
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        if sop_class not in ACCEPTED_SOP_CLASSES:
            log.warning("refused instance %s: SOP class %s is not CT image storage", _loggable(sop_uid),
                        _loggable(sop_class))
            return SOP_CLASS_NOT_SUPPORTED
        try:
            ds = event.dataset
            study_uid, series_uid = str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
            fault = _instance_fault(ds, sop_uid, study_uid, series_uid)
        except Exception as err:  # pydicom cannot decode it, or a UID is missing
            fault = f"cannot be decoded ({type(err).__name__})"
        if fault:
            log.error("bad instance %s skipped: %s", _loggable(sop_uid), fault)
            return DATASET_DOES_NOT_MATCH
        try:
            self.spool.store(event.encoded_dataset(include_meta=True), study_uid, series_uid, sop_uid)
        except OSError as err:
            log.error("instance %s not spooled: %s", sop_uid, err.strerror)
            return OUT_OF_RESOURCES
        return SUCCESS

    def _watch(self) -> None:
        while not self._stop.wait(_POLL_SECONDS):
            try:
                self._queue_ready()
            except OSError as err:  # the spool's disk: log it, keep watching
                log.error("spool: %s", err.strerror)

    def _queue_ready(self) -> None:
        """Queue the studies whose quiet period is over and the deliveries due for another attempt."""
        for study in self.spool.claim_quiet(self.quiet_seconds):
            log.info("study %s complete (quiet %.1f s)", _study_key(study), self.quiet_seconds)
            self._enqueue(study)
        now = time.monotonic()
        with self._lock:
            due = [study for study, (when, _) in self._retries.items() if when <= now]
            for study in due:  # queued once: not due again until this attempt fails
                self._retries[study] = (math.inf, self._retries[study][1])
        for study in due:
            self._enqueue(study)

    def _retry_later(self, study: Path) -> float:
        """Schedule another delivery attempt of ``study``; the delay doubles up to MAX_RETRY_SECONDS."""
        with self._lock:
            _, delay = self._retries.get(study, (0.0, self.retry_seconds))
            self._retries[study] = (time.monotonic() + delay, min(2 * delay, MAX_RETRY_SECONDS))
        return delay

    # --- predicting and sending ---

    def _work(self) -> None:
        while True:
            study = self._queue.get()
            if study is None or self._stop.is_set():
                return  # stopping: what is still queued stays in processing/ and resumes at the next start
            try:
                self.process(study)
                with self._lock:
                    self._retries.pop(study, None)
            except SendError as err:
                delay = self._retry_later(study)
                log.error("study %s: results not delivered (%s); trying again in %.1f s",
                          _study_key(study), err, delay)
            except Exception:  # a bug must not kill the node: log it and keep the study for a retry
                log.exception("study %s: unexpected failure; kept in the spool", _study_key(study))
            finally:
                with self._lock:
                    self._pending -= 1

    def process(self, folder: Path) -> None:
        """Predict one spooled study, send its DICOM results, then drop it from the spool (SendError: kept)."""
        from headct.dicom_out import study_datasets
        from headct.predict import read_studies

        key = _study_key(folder)
        started = time.perf_counter()
        try:
            skipped: list[InputError] = []
            studies = read_studies(folder, errors=skipped)
            for err in skipped:  # a spooled file is <series>/<SOP Instance UID>.dcm: named by its UID
                log.error("bad instance %s of study %s skipped: %s", Path(err.path or "?").stem, key, err.fault)
            outputs = []
            for study in studies:
                predicted = time.perf_counter()
                result = self.predictor.predict_study(study)
                built = time.perf_counter()
                datasets = study_datasets(self.predictor, study, result)
                seconds = {"read_s": predicted - started, "predict_s": built - predicted,
                           "dicom_s": time.perf_counter() - built}
                outputs.append((result, datasets, seconds))
                started = time.perf_counter()
        except InputError as err:
            log.error("study %s cannot be predicted and is set aside: %s", key, err.fault)
            self.spool.fail(folder)
            return
        for result, datasets, seconds in outputs:  # a SendError leaves the study spooled, for another attempt
            sending = time.perf_counter()
            if self.send_to is not None:
                send_c_store(datasets, self.send_to, self.ae_title)
            if self.stow:
                send_stow(datasets, self.stow)
            seconds["send_s"] = time.perf_counter() - sending
            positive = ", ".join(result["study_positive"]) or "nothing"
            where = " and ".join(w for w, on in (("C-STORE", self.send_to), ("STOW-RS", self.stow)) if on)
            log.info("study %s: %s found; SR and %d captures %s (%s)", key, positive, len(datasets) - 1,
                     f"sent by {where}" if where else "made, no destination to send them to",
                     ", ".join(f"{name[:-2]} {value:.2f} s" for name, value in seconds.items()))
            self.delivered.append({"study": key, "sop_uids": [str(ds.SOPInstanceUID) for ds in datasets],
                                   "at": time.monotonic(), "seconds": seconds})
        self.spool.finish(folder)


def decodable_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes whose pixel data pydicom can decode here (its plugins, e.g. pylibjpeg), uncompressed
    first: what the SCP accepts for CT, so a PACS sends compressed studies without transcoding."""
    from pydicom.pixels import get_decoder
    from pynetdicom import ALL_TRANSFER_SYNTAXES

    usable = []
    for uid in ALL_TRANSFER_SYNTAXES:
        try:
            if get_decoder(uid).is_available:
                usable.append(uid)
        except NotImplementedError:  # no decoder for it in pydicom at all (video, JPIP, JPEG XL)
            continue
    return usable


def _loggable(uid: str) -> str:
    """A UID from the network as it may appear in a log: itself when it is a valid UID, else a placeholder."""
    return uid if _UID.match(uid) and len(uid) <= 64 else "(no valid UID)"


def _instance_fault(ds: Dataset, sop_uid: str, study_uid: str, series_uid: str) -> str | None:
    """Why an instance cannot be spooled, or None (UIDs are used as folder names: digits and dots only)."""
    for name, uid in (("SOP Instance UID", sop_uid), ("Study Instance UID", study_uid),
                      ("Series Instance UID", series_uid)):
        if not _UID.match(uid) or len(uid) > 64:
            return f"its {name} is not a valid UID"
    if str(ds.get("SOPInstanceUID", "")) != sop_uid:
        return "its SOP Instance UID differs from the one in the C-STORE request"
    if "PixelData" not in ds:
        return "it has no pixel data"
    return None


def _study_key(folder: Path) -> str:
    """The log name of a spooled study: a hash of its Study Instance UID (the folder name before any suffix)."""
    uid = folder.name.rsplit(".", 1)[0] if folder.parent.name == "processing" else folder.name
    return short_hash(uid)


# --- the command -----------------------------------------------------------------------

def listen_command(args: argparse.Namespace) -> int:
    """``headct listen``: run the node until SIGTERM or Ctrl-C."""
    from headct.predict import Predictor

    send_to = Destination.parse(args.send_to) if args.send_to else None
    if send_to is None and not args.stow:
        log.warning("neither --send-to nor --stow given: results are computed and dropped")
    if getattr(args, "verbose", 0) < 1:  # pynetdicom logs every association and store at INFO
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    predictor = Predictor.from_checkpoint(args.model, runtime=args.runtime)
    node = Node(predictor, args.spool, ae_title=args.ae_title, host=args.host, port=args.port,
                quiet_seconds=args.quiet_seconds, send_to=send_to, stow=args.stow).start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    node.stop()
    print(f"headct listen stopped ({len(node.delivered)} studies delivered)")
    return 0
