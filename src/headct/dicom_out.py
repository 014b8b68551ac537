"""Results as DICOM: a TID 1500 structured report and Grad-CAM secondary captures.

For one predicted study, :func:`study_datasets` builds

- a Comprehensive 3D SR holding a TID 1500 Imaging Measurement Report: one
  measurement group per label (finding type = the label's concept), with the
  study-level finding as a qualitative evaluation (Present / Absent), the
  calibrated probability and the frozen threshold as measurements, the model's
  name, version, temperature, provenance and the analysed and rejected series
  as algorithm identification (TID 4019), and every analysed instance as a
  source image; and
- one Secondary Capture (RGB, ``BurnedInAnnotation`` YES) per positive slice and
  label: the Grad-CAM overlay with a burned-in legend (class, probability,
  "research use only"), in a new series of the same study.

The objects copy the patient and study modules from the source images, as DICOM
requires (highdicom does the copying); nothing here logs those attributes. The
source headers are re-read from the study's files, header only, because the
Predictor's Volume deliberately keeps no patient identifiers.

UIDs are derived from the analysed instances and the model, so the same study
predicted twice by the same model gives the same objects (a receiving PACS
sees a duplicate, not a second report).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import (
    AlgorithmIdentification,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from headct import __version__, atomic
from headct.errors import InputError
from headct.io.privacy import short_hash

if TYPE_CHECKING:
    from headct.checkpoint import CheckpointConfig
    from headct.predict import Predictor, StudyInput

log = logging.getLogger(__name__)

MANUFACTURER = "headct"
RESEARCH_NOTICE = "RESEARCH USE ONLY - not for diagnosis"
MAX_OVERLAYS_PER_LABEL = 4
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
PRIVATE_SCHEME = "99HEADCT"
"""Coding scheme of concepts with no standard code (``99`` = private, by DICOM convention)."""

THRESHOLD = Code("THRESHOLD", PRIVATE_SCHEME, "Decision threshold")
PRESENT, ABSENT = codes.SCT.Present, codes.SCT.Absent
_STANDARD_CONCEPTS = {
    "any": codes.SCT.IntracranialHemorrhage,
    "stroke": codes.SCT.CerebrovascularAccidentOrStroke,
}
_MEANINGS = {
    "epidural": "Epidural hemorrhage",
    "intraparenchymal": "Intraparenchymal hemorrhage",
    "intraventricular": "Intraventricular hemorrhage",
    "subarachnoid": "Subarachnoid hemorrhage",
    "subdural": "Subdural hemorrhage",
    "hemorrhagic": "Hemorrhagic stroke",
    "ischemic": "Ischemic stroke",
    "non-stroke": "No stroke",
}


def label_concept(label: str) -> Code:
    """The coded concept of a model label: SNOMED CT where one exists, else a private code."""
    if label in _STANDARD_CONCEPTS:
        return _STANDARD_CONCEPTS[label]
    return Code(label[:16], PRIVATE_SCHEME, _MEANINGS.get(label, label))


# --- source headers ------------------------------------------------------------

def source_headers(source: str | Path, sop_uids: Iterable[str]) -> dict[str, Dataset]:
    """Headers (no pixels) of the source instances named by SOP Instance UID, read from ``source``."""
    wanted = set(sop_uids)
    root = Path(source)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    found: dict[str, Dataset] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM (a labels file, a DICOMDIR's neighbours): nothing to reference
            continue
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid in wanted:
            found[uid] = _with_type2_attributes(ds)
        if len(found) == len(wanted):
            break
    return found


_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_type2_attributes(ds: Dataset) -> Dataset:
    """The header with the patient and study attributes DICOM requires (type 2) present, empty if unknown."""
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


# --- the structured report -------------------------------------------------------

def analysed_and_rejected(result: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Series UIDs analysed (scan order of the slices) and the rejected series, if the result names them."""
    analysed = list(dict.fromkeys(s["series"] for s in result["slices"] if s.get("series")))
    rejected = list((result.get("series") or {}).get("rejected") or [])
    return analysed, rejected


def build_report(result: dict[str, Any], config: CheckpointConfig, headers: dict[str, Dataset]) -> Comprehensive3DSR:
    """The Comprehensive 3D SR (TID 1500) of one prediction, referencing its analysed instances."""
    evidence = _evidence(result, headers)
    card = result["model"]
    sources = [SourceImageForMeasurementGroup(ds.SOPClassUID, ds.SOPInstanceUID) for ds in evidence]
    algorithm = AlgorithmIdentification(
        name=str(card["name"]), version=str(card["version"]), manufacturer=MANUFACTURER,
        parameters=_algorithm_parameters(result, config))
    argmax = _decides_by_argmax(config)
    groups = []
    for label in card["labels"]:
        concept = label_concept(label)
        measurements = [Measurement(codes.DCM.Probability, float(result["study_probabilities"][label]),
                                    codes.UCUM.NoUnits)]
        if not argmax:  # a multi-class model decides by arg-max: its thresholds decide nothing
            measurements.append(Measurement(THRESHOLD, float(card["thresholds"][label]), codes.UCUM.NoUnits))
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=_uid(result, card, "group", label), identifier=f"headct {label}"),
            finding_type=concept,
            algorithm_id=algorithm,
            source_images=sources,
            measurements=measurements,
            qualitative_evaluations=[
                QualitativeEvaluation(concept, PRESENT if label in result["study_positive"] else ABSENT)],
        ))
    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["headct-device", str(card["name"]), str(card["version"])]),
            name="headct", manufacturer_name=MANUFACTURER, model_name=str(card["name"])[:64]))
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTHeadReport,
        imaging_measurements=groups,
    )
    sr = Comprehensive3DSR(
        evidence=evidence, content=report[0],
        series_instance_uid=_uid(result, card, "sr-series"), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=_uid(result, card, "sr"), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = f"headct findings ({RESEARCH_NOTICE})"[:64]
    scheme = Dataset()  # the private scheme declared, as PS3.3 C.12.1.1.2 asks of local coding schemes
    scheme.CodingSchemeDesignator, scheme.CodingSchemeName = PRIVATE_SCHEME, "headct labels and parameters"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return sr


def _algorithm_parameters(result: dict[str, Any], config: CheckpointConfig) -> list[str]:
    """Temperature, provenance and the series analysed / rejected, as TID 4019 parameter texts."""
    decision = "arg-max over the classes" if _decides_by_argmax(config) else "probability >= threshold per label"
    parameters = [f"temperature={config.applied_temperature:g}", f"decision={decision}",
                  f"headct={__version__}"]
    provenance = {k: v for k, v in dataclasses.asdict(config.provenance).items() if v is not None}
    if provenance:
        parameters.append("provenance=" + json.dumps(provenance, sort_keys=True))
    analysed, rejected = analysed_and_rejected(result)
    parameters += [f"analysed series {uid}" for uid in analysed]
    for item in rejected:
        detail = f" ({item['detail']})" if item.get("detail") else ""
        parameters.append(f"rejected series {item.get('series')}: {item.get('reason')}{detail}")
    return parameters


def read_report(sr: Dataset) -> dict[str, Any]:
    """What an SR written by :func:`build_report` says: study, series, findings and algorithm parameters."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr, copy=True).content
    labels = {(c.value, c.scheme_designator): label for label, c in _STANDARD_CONCEPTS.items()}
    findings: dict[str, dict[str, Any]] = {}
    for group in report.get_image_measurement_groups():
        concept = group.finding_type
        label = labels.get((concept.value, concept.scheme_designator), concept.value)
        (evaluation,) = group.get_qualitative_evaluations()
        values = {(m.name.value, m.name.scheme_designator): float(m.value) for m in group.get_measurements()}
        findings[label] = {
            "present": evaluation.value == PRESENT,
            "probability": values[(codes.DCM.Probability.value, "DCM")],
            "threshold": values.get((THRESHOLD.value, PRIVATE_SCHEME)),
            "instances": [image.referenced_sop_instance_uid for image in group.source_images],
        }
    evidence = sr.CurrentRequestedProcedureEvidenceSequence
    return {
        "study": str(evidence[0].StudyInstanceUID),
        "series": [str(s.SeriesInstanceUID) for e in evidence for s in e.ReferencedSeriesSequence],
        "findings": findings,
        "parameters": _texts(sr, codes.DCM.AlgorithmParameters.value),
    }


def _texts(item: Dataset, code_value: str) -> list[str]:
    """Every TEXT content item below ``item`` whose concept name has ``code_value`` (first occurrence per text)."""
    found: list[str] = []
    for child in item.get("ContentSequence", []):
        name = child.get("ConceptNameCodeSequence")
        if child.get("ValueType") == "TEXT" and name and name[0].CodeValue == code_value:
            found.append(str(child.TextValue))
        found.extend(_texts(child, code_value))
    return list(dict.fromkeys(found))


# --- the secondary captures ----------------------------------------------------

def build_overlays(overlays: Iterable[tuple[str, int, str, np.ndarray]], result: dict[str, Any],
                   headers: dict[str, Dataset], config: CheckpointConfig) -> list[hd.sc.SCImage]:
    """Secondary Captures of ``(slice SOP UID, slice index, label, rgb)`` overlays, one new series."""
    card = result["model"]
    series_uid = _uid(result, card, "sc-series")
    probabilities = {s["uid"]: s["probabilities"] for s in result["slices"]}
    images = []
    for number, (slice_uid, index, label, rgb) in enumerate(overlays, start=1):
        ref = headers[slice_uid]
        p = float(probabilities[slice_uid][label])
        decided = "arg-max" if _decides_by_argmax(config) else f"threshold {float(card['thresholds'][label]):.2f}"
        legend = [f"{label}: p={p:.2f} ({decided})",
                  f"slice {index + 1} - {card['name']} {card['version']}", RESEARCH_NOTICE]
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref, pixel_array=with_legend(rgb, legend), photometric_interpretation="RGB",
            bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=series_uid,
            series_number=SC_SERIES_NUMBER, sop_instance_uid=_uid(result, card, "sc", slice_uid, label),
            instance_number=number, manufacturer=MANUFACTURER, patient_orientation=patient_orientation(ref),
            transfer_syntax_uid=ExplicitVRLittleEndian)
        image.BurnedInAnnotation = "YES"
        image.BodyPartExamined = str(ref.get("BodyPartExamined") or "HEAD")
        image.SeriesDescription = f"headct Grad-CAM ({RESEARCH_NOTICE})"[:64]
        image.ImageComments = " | ".join(legend)
        image.DerivationDescription = f"Grad-CAM of {label} over the source slice"
        source = Dataset()
        source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = ref.SOPClassUID, ref.SOPInstanceUID
        image.SourceImageSequence = [source]
        images.append(image)
    return images


def patient_orientation(ref: Dataset) -> tuple[str, str]:
    """Patient Orientation (row, column directions) of a slice from its ImageOrientationPatient, e.g. ("L", "P")
    for a standard axial slice; the dominant axis only, as Patient Orientation allows one letter per axis."""
    try:
        cosines = [float(v) for v in ref.ImageOrientationPatient]
    except (AttributeError, TypeError, ValueError):
        return ("L", "P")
    if len(cosines) != 6:
        return ("L", "P")
    letters = (("L", "R"), ("P", "A"), ("H", "F"))  # +x is patient left, +y posterior, +z head

    def letter(vector: list[float]) -> str:
        axis = int(np.argmax(np.abs(vector)))
        return letters[axis][0 if vector[axis] >= 0 else 1]

    return letter(cosines[:3]), letter(cosines[3:])


def with_legend(rgb: np.ndarray, lines: Sequence[str], min_width: int = 384) -> np.ndarray:
    """The overlay scaled up (nearest, whole factor) to at least ``min_width``, a legend band burned in below.

    Pillow draws the text; the band sits outside the image so it hides no anatomy.
    """
    from PIL import Image, ImageDraw, ImageFont

    factor = max(1, -(-min_width // rgb.shape[1]))
    big = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
    font_size = max(12, big.shape[1] // 40)
    band = (font_size + 4) * len(lines) + 8
    canvas = Image.new("RGB", (big.shape[1], big.shape[0] + band), (0, 0, 0))
    canvas.paste(Image.fromarray(np.ascontiguousarray(big, dtype=np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=font_size)
    for i, line in enumerate(lines):
        draw.text((6, big.shape[0] + 4 + i * (font_size + 4)), line, fill=(255, 255, 0), font=font)
    return np.asarray(canvas)


# --- one study -------------------------------------------------------------------

def study_datasets(predictor: Predictor, study: StudyInput, result: dict[str, Any],
                   max_overlays: int | None = MAX_OVERLAYS_PER_LABEL) -> list[Dataset]:
    """The SR and the Grad-CAM secondary captures of one predicted study (``Predictor``, ``StudyInput``).

    Captures are drawn for the ``max_overlays`` most probable positive slices of each
    label (all of them when None): Grad-CAM costs a backward pass per slice.
    """
    wanted = [s["uid"] for s in result["slices"]]
    headers = source_headers(study.source, wanted) if study.source else {}
    if not headers:
        raise InputError(None, "DICOM output needs DICOM input (no source instance of the study could be read)")
    config = predictor.config
    sr = build_report(result, config, headers)
    overlays = ((volume.slice_uids[position], position, label, rgb)
                for volume, position, label, rgb in predictor.overlay_images(study, top_positive(result, max_overlays))
                if volume.slice_uids and volume.slice_uids[position] in headers)
    return [sr, *build_overlays(overlays, result, headers, config)]


def top_positive(result: dict[str, Any], per_label: int | None) -> dict[str, Any]:
    """The result with each slice's positive labels kept only on the ``per_label`` most probable slices."""
    if per_label is None:
        return result
    kept: set[tuple[int, str]] = set()
    for label in result["model"]["labels"]:
        ranked = sorted((n for n, s in enumerate(result["slices"]) if label in s["positive"]),
                        key=lambda n: -result["slices"][n]["probabilities"][label])
        kept.update((n, label) for n in ranked[:per_label])
    slices = [{**s, "positive": [label for label in s["positive"] if (n, label) in kept]}
              for n, s in enumerate(result["slices"])]
    return {**result, "slices": slices}


def results_zip(predictor: Predictor, source: str | Path) -> bytes:
    """One study's DICOM results (SR + captures) as a zip, ``<SOPInstanceUID>.dcm`` each (``headct serve``)."""
    import io
    import zipfile

    from headct.predict import read_studies

    studies = read_studies(Path(source))
    if len(studies) != 1:
        raise InputError(source, f"holds {len(studies)} studies; DICOM results are made one study at a time")
    result = predictor.predict_study(studies[0])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for ds in study_datasets(predictor, studies[0], result):
            archive.writestr(f"{ds.SOPInstanceUID}.dcm", encode(ds))
    return buffer.getvalue()


def write_datasets(folder: str | Path, datasets: Sequence[Dataset]) -> list[Path]:
    """Each dataset as ``<folder>/<SOPInstanceUID>.dcm`` (DICOM file format, written atomically)."""
    folder = Path(folder)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        atomic.write_bytes(path, encode(ds))
        paths.append(path)
    return paths


def encode(ds: Dataset) -> bytes:
    """The dataset as a DICOM file (preamble, file meta, dataset) in memory."""
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return bytes(buffer.getvalue())


def write_study_dicom(predictor: Predictor, study: StudyInput, result: dict[str, Any], out: str | Path) -> list[Path]:
    """``headct predict --dicom-out OUT``: the study's SR and captures under ``OUT/<study>/``."""
    datasets = study_datasets(predictor, study, result)
    paths = write_datasets(Path(out) / short_hash(result["study"]), datasets)
    log.info("study %s: DICOM SR and %d secondary captures written", short_hash(result["study"]), len(paths) - 1)
    return paths


def _decides_by_argmax(config: CheckpointConfig) -> bool:
    """Whether the model's decision is the arg-max class (multi-class) rather than per-label thresholds."""
    return (config.label_kind or "multilabel") == "multiclass"


def _evidence(result: dict[str, Any], headers: dict[str, Dataset]) -> list[Dataset]:
    """The analysed instances' headers in scan order; all of one study, as an SR's evidence must be."""
    evidence = [headers[s["uid"]] for s in result["slices"] if s["uid"] in headers]
    studies = {str(ds.StudyInstanceUID) for ds in evidence}
    if len(studies) != 1:
        raise InputError(None, f"the analysed instances belong to {len(studies)} studies; an SR references one")
    return evidence


def _uid(result: dict[str, Any], card: dict[str, Any], *what: str) -> str:
    """A UID fixed by the analysed instances, the model, its study probabilities and what the UID is for.

    The probabilities stand for the weights: another checkpoint under the same name gives other UIDs.
    """
    instances = "|".join(s["uid"] for s in result["slices"])
    return generate_uid(entropy_srcs=["headct-result", str(card["name"]), str(card["version"]),
                                      json.dumps(card["thresholds"], sort_keys=True),
                                      json.dumps(result["study_probabilities"], sort_keys=True), instances, *what])


def results_writer(out: str | Path) -> Callable[[Predictor, StudyInput, dict[str, Any]], None]:
    """``headct predict --dicom-out OUT``'s per-study hook: :func:`write_study_dicom`, a fault as one line."""

    def write(predictor: Predictor, study: StudyInput, result: dict[str, Any]) -> None:
        try:
            write_study_dicom(predictor, study, result, out)
        except InputError as err:
            log.error("no DICOM results for study %s: %s", short_hash(result["study"]), err.fault)

    return write
