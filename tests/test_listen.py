"""The DICOM node: C-ECHO, C-STORE in (spooled before acknowledged), results out to a real Orthanc."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, RLELossless
from pynetdicom import AE
from pynetdicom.sop_class import Verification

import headct
from headct.dicom_out import MAX_OVERLAYS_PER_LABEL, read_report
from headct.listen import DATASET_DOES_NOT_MATCH, SOP_CLASS_NOT_SUPPORTED, Destination, Node
from headct.predict import Predictor

PRESENT = {"intraparenchymal", "any"}  # as the dicom_checkpoint fixture's thresholds fix them


@pytest.fixture(scope="module")
def predictor(dicom_checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(dicom_checkpoint, device="cpu")


@pytest.fixture
def start_node(predictor: Predictor, tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Starts in-process nodes on a free loopback port (quiet period 1 s unless told); stops them."""
    nodes: list[Node] = []

    def start(**kwargs: object) -> Node:
        options = {"spool": tmp_path / "spool", "quiet_seconds": 1.0, **kwargs}
        node = Node(predictor, options.pop("spool"), ae_title="HEADCT", host="127.0.0.1", port=0,
                    **options).start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def study_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def store(items: Sequence[Path | pydicom.Dataset], port: int) -> list[int]:
    """C-STORE the files or datasets to the node in one association; their status codes."""
    ae = AE(ae_title="SCANNER")
    for sop_class in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, RLELossless)
    assoc = ae.associate("127.0.0.1", port, ae_title="HEADCT")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(item).Status) for item in items]
    finally:
        assoc.release()


def echo(port: int, called: str = "HEADCT") -> bool:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


def wait_for(condition: Callable[[], object], seconds: float, what: str) -> object:
    """Poll ``condition`` every 0.2 s until truthy; fail naming ``what`` after ``seconds``."""
    for _ in range(int(seconds / 0.2)):
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {seconds:.0f} s waiting for {what}")


AE_TITLES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\@"),
                   min_size=1, max_size=16)
HOSTS = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}", fullmatch=True)


@given(AE_TITLES, HOSTS, st.integers(1, 65535))
def test_destination_parses_what_it_formats(ae_title: str, host: str, port: int) -> None:
    assert Destination.parse(f"{ae_title}@{host}:{port}") == Destination(ae_title, host, port)


@given(st.text(max_size=40))
def test_destination_parse_accepts_only_the_documented_form(text: str) -> None:
    try:
        parsed = Destination.parse(text)
    except ValueError as err:
        assert "AET@HOST:PORT" in str(err)
    else:
        assert 1 <= len(parsed.ae_title) <= 16 and "@" not in parsed.ae_title and "\\" not in parsed.ae_title
        assert parsed.host and 1 <= parsed.port <= 65535 and text.endswith(f":{text.rsplit(':', 1)[1]}")


@pytest.mark.parametrize("text", ["PACS@host:0", "PACS@host:65536", "@host:104", "SEVENTEEN_CHARS_X@h:104",
                                  "PA\\CS@host:104", "PACS@ho st:104", "PACS@host", "   @host:104",
                                  "A@B@host:104"])
def test_destination_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="AET@HOST:PORT"):
        Destination.parse(text)


def test_echo_refusals_and_bad_instances(start_node: Callable[..., Node], bleed_study: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    node = start_node(quiet_seconds=3600)
    assert echo(node.port)
    assert not echo(node.port, called="SOMEONE-ELSE")  # called AE title checked
    first, second = (pydicom.dcmread(f) for f in study_files(bleed_study)[:2])
    mr = pydicom.dcmread(study_files(bleed_study)[2])
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
    del second.PixelData
    rle = pydicom.dcmread(study_files(bleed_study)[3])
    rle.compress(RLELossless)
    with caplog.at_level(logging.INFO, logger="headct"):
        statuses = store([mr, second, first, rle], node.port)
    assert statuses == [SOP_CLASS_NOT_SUPPORTED, DATASET_DOES_NOT_MATCH, 0, 0]
    spooled = sorted((node.spool.root / "incoming").rglob("*.dcm"))
    # acknowledged = on disk: the good instances are spooled (before the answer), the refused ones are not
    assert sorted(p.name for p in spooled) == sorted(f"{ds.SOPInstanceUID}.dcm" for ds in (first, rle))
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in spooled}
    assert (by_uid[rle.SOPInstanceUID].pixel_array == pydicom.dcmread(study_files(bleed_study)[3]).pixel_array).all()
    assert by_uid[rle.SOPInstanceUID].file_meta.TransferSyntaxUID == RLELossless  # kept as sent, no transcoding
    assert f"bad instance {second.SOPInstanceUID} skipped: it has no pixel data" in caplog.text
    assert first.PatientID not in caplog.text and "PHANTOM" not in caplog.text


def test_a_bad_instance_is_logged_by_uid_and_the_study_goes_on(start_node: Callable[..., Node], bleed_study: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    node = start_node()  # no destination: the results are made and dropped
    files = study_files(bleed_study)
    broken = pydicom.dcmread(files[0])
    broken.PixelData = broken.PixelData[:100]  # passes the checks at C-STORE; reading it fails
    with caplog.at_level(logging.INFO, logger="headct"):
        assert store([broken, *files[1:]], node.port) == [0] * len(files)
        wait_for(lambda: node.delivered, 300, "the study's results")
    lines = [r.getMessage() for r in caplog.records if r.name == "headct.listen"]
    assert any(line.startswith(f"bad instance {broken.SOPInstanceUID} ") and "skipped: pixel data is 100 bytes"
               in line for line in lines), lines
    assert any("SR and" in line and "made, no destination to send them to" in line for line in lines)
    assert "PHANTOM" not in caplog.text and broken.StudyInstanceUID not in "\n".join(lines)


def test_results_are_sent_again_when_the_destination_comes_back(start_node: Callable[..., Node], bleed_study: Path,
                                                                free_port: Callable[[], int],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    from pynetdicom import AllStoragePresentationContexts, evt

    port = free_port()  # nothing listens there yet
    node = start_node(send_to=Destination("PACS", "127.0.0.1", port), retry_seconds=0.5)
    with caplog.at_level(logging.INFO, logger="headct"):
        assert store(study_files(bleed_study), node.port) == [0] * len(study_files(bleed_study))
        wait_for(lambda: "results not delivered" in caplog.text, 300, "a failed delivery")
    assert len(list((node.spool.root / "processing").iterdir())) == 1  # kept for another attempt
    received: list[str] = []
    pacs = AE(ae_title="PACS")
    for context in AllStoragePresentationContexts:
        pacs.add_supported_context(context.abstract_syntax)
    handlers = [(evt.EVT_C_STORE, lambda event: received.append(str(event.request.AffectedSOPClassUID)) or 0)]
    server = pacs.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        wait_for(lambda: node.delivered, 300, "the delivery once the destination is up")
    finally:
        server.shutdown()
    sr_class, sc_class = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"
    assert set(received) == {sr_class, sc_class} and received.count(sr_class) == 1
    assert wait_for(node.idle, 10, "the node to be idle")
    assert not any((node.spool.root / "processing").iterdir())


def test_study_in_results_out_to_orthanc_by_c_store(start_node: Callable[..., Node], orthanc: object,
                                                    bleed_study: Path, predictor: Predictor,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    node = start_node(send_to=Destination(orthanc.ae_title, "127.0.0.1", orthanc.dicom_port))
    with caplog.at_level(logging.INFO):
        assert store(study_files(bleed_study), node.port) == [0] * len(study_files(bleed_study))
        wait_for(lambda: node.delivered, 300, "the results to be delivered")
    assert "PHANTOM" not in caplog.text  # the PatientID, in no log of headct, pynetdicom or pydicom
    (sr,) = orthanc.datasets("SR")
    report = read_report(sr)
    source = pydicom.dcmread(study_files(bleed_study)[0], stop_before_pixels=True)
    assert report["study"] == source.StudyInstanceUID and report["series"] == [source.SeriesInstanceUID]
    expected = predictor.predict(bleed_study)["study_probabilities"]
    for label, finding in report["findings"].items():
        assert finding["present"] == (label in PRESENT)
        assert finding["probability"] == pytest.approx(expected[label])
    captures = orthanc.datasets("OT")
    assert len(captures) == len(PRESENT) * MAX_OVERLAYS_PER_LABEL
    assert {c.StudyInstanceUID for c in captures} == {source.StudyInstanceUID}
    assert wait_for(node.idle, 10, "the node to be idle")
    assert not any((node.spool.root / "processing").iterdir())  # delivered studies leave the spool


def test_orthanc_pushes_a_study_and_gets_results_by_stow(start_node: Callable[..., Node], orthanc: object,
                                                         bleed_study: Path) -> None:
    node = start_node(stow=orthanc.dicomweb)
    for path in study_files(bleed_study):
        orthanc.post("/instances", path.read_bytes())
    (study_id,) = orthanc.get("/studies")
    orthanc.put("/modalities/headct", json.dumps({"AET": "HEADCT", "Host": "127.0.0.1", "Port": node.port}))
    orthanc.post("/modalities/headct/store", json.dumps({"Resources": [study_id], "Synchronous": True}))
    wait_for(lambda: node.delivered, 300, "the pushed study's results")
    (sr,) = wait_for(lambda: orthanc.datasets("SR"), 30, "the SR in Orthanc")
    source = pydicom.dcmread(study_files(bleed_study)[0], stop_before_pixels=True)
    report = read_report(sr)
    assert report["study"] == source.StudyInstanceUID
    assert {label for label, f in report["findings"].items() if f["present"]} == PRESENT
    assert len(orthanc.get("/studies")) == 1  # the results joined the source study


@contextmanager
def listen_process(checkpoint: Path, spool: Path, port: int, send_to: str) -> Iterator[subprocess.Popen]:
    """``headct listen`` as a subprocess, ready (answers C-ECHO) on ``port``; terminated on exit."""
    src = str(Path(headct.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "headct.cli", "listen", "--model", str(checkpoint), "--ae-title", "HEADCT",
               "--host", "127.0.0.1", "--port", str(port), "--spool", str(spool), "--quiet-seconds", "4",
               "--send-to", send_to]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: process.poll() is not None or echo(port), 120, "headct listen to answer C-ECHO")
        assert process.poll() is None, f"headct listen exited with {process.returncode}"
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


def test_killed_while_receiving_then_restarted_gives_the_same_results(dicom_checkpoint: Path, orthanc: object,
                                                                      bleed_study: Path, tmp_path: Path,
                                                                      free_port: Callable[[], int]) -> None:
    files = study_files(bleed_study)
    destination = f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}"
    with listen_process(dicom_checkpoint, tmp_path / "uninterrupted", free_port(), destination) as process:
        assert store(files, _port_of(process)) == [0] * len(files)
        (reference,) = wait_for(lambda: orthanc.datasets("SR"), 300, "the uninterrupted run's SR")
    assert process.returncode == 0  # SIGTERM: a clean stop
    reference_captures = sorted(c.SOPInstanceUID for c in orthanc.datasets("OT"))
    orthanc.clear()

    port, spool = free_port(), tmp_path / "interrupted"
    with listen_process(dicom_checkpoint, spool, port, destination) as process:
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="HEADCT")
        received = [int(assoc.send_c_store(f).Status) for f in files[:3]]
        process.kill()  # SIGKILL with the association still open: mid-study
        process.wait(timeout=30)
        assoc.abort()
    assert received == [0, 0, 0]
    assert len(list((spool / "incoming").rglob("*.dcm"))) == 3  # what was acknowledged survived the kill
    with listen_process(dicom_checkpoint, spool, port, destination):
        assert store(files[3:], port) == [0] * (len(files) - 3)
        (resumed,) = wait_for(lambda: orthanc.datasets("SR"), 300, "the resumed run's SR")
        time.sleep(6)  # longer than the quiet period: a partial study would have been reported by now
        assert len(orthanc.datasets("SR")) == 1
    assert resumed.SOPInstanceUID == reference.SOPInstanceUID  # same instances, same model → same UIDs
    assert read_report(resumed) == read_report(reference)
    assert sorted(c.SOPInstanceUID for c in orthanc.datasets("OT")) == reference_captures
    assert not list((spool / "incoming").rglob("*.dcm"))


def _port_of(process: subprocess.Popen) -> int:
    return int(process.args[process.args.index("--port") + 1])
