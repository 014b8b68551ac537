"""``headct prepare``: read a dataset once into a resampled, memory-mapped cache with a split.

Steps: plan the input (per format: which files form which series, their
labels; DICOM files are read and resampled once while planning, since only
their headers say which series they belong to), read/sort and resample each
series in a process pool and write it as a shard, then write the index with a
patient/study/image split and meta.json.

Resumable: a shard whose sidecar exists and matches its job (file names and
content, see :meth:`SeriesJob.digest`) is not read again, so a build killed at
any point (even SIGKILL) finishes on the next run with every slice exactly
once, and a file rewritten since is read again. Unusable files are listed with
their reason and the build goes on; it fails (InputError, saying what the
input holds instead) only when nothing usable was read.

Input file names reach the terminal only: what the cache keeps on disk
(sidecars, ``work/``, meta.json) names a skipped file by a 16-hex hash of its
path under the input.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from headct import __version__
from headct.data.cache import (
    FORMAT_VERSION,
    INDEX_COLUMNS,
    read_record,
    remove_stale_temporaries,
    write_index,
    write_meta,
    write_shard,
)
from headct.data.dicom_series import (
    CHUNK_FILES,
    assemble_staged,
    chunk_digest,
    fingerprint_chunk,
    read_chunk_record,
    stage_chunk,
)
from headct.data.plan import Plan, SeriesJob, relative_name, report_examples
from headct.data.resample import resample_masks, resample_slices
from headct.data.splits import SplitConfig, choose_groups, parse_fractions, split_studies
from headct.data.tabular import TableColumns
from headct.errors import InputError
from headct.io.discovery import find_dicom_files
from headct.io.privacy import short_hash
from headct.labels import PHANTOM_MARKER

log = logging.getLogger(__name__)

FORMATS = ("dicom", "rsna", "png-folders", "csv", "nifti")


@dataclass
class PrepareConfig:
    """Everything ``headct prepare`` needs; the CLI fills it from its flags."""

    input: str
    format: str
    out: str
    labels: str | None = None
    size: int = 256
    workers: int = 1
    split: SplitConfig = field(default_factory=SplitConfig)
    class_map: str | None = None
    columns: TableColumns = field(default_factory=TableColumns)


@dataclass
class PrepareResult:
    """What a build made: counts, what it skipped, the split, where the cache is."""

    cache: Path
    studies: int
    series: int
    slices: int
    skipped: list[dict[str, str]]
    split: dict[str, Any]
    reused: int
    notes: dict[str, Any]


def prepare(config: PrepareConfig) -> PrepareResult:
    """Build (or finish) the cache at ``config.out``; see the module docstring."""
    if config.format not in FORMATS:
        raise ValueError(f"unknown format {config.format!r}; one of {', '.join(FORMATS)}")
    if config.size < 8:
        raise ValueError(f"--size must be at least 8, got {config.size}")
    start = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)

    with _one_torch_thread(), _Pool(config.workers, out, config.size) as pool:
        plan = make_plan(config, pool)
        clash = set(plan.label_names) & set(INDEX_COLUMNS)
        if clash:
            raise InputError(config.labels or config.input, f"label columns {sorted(clash)} clash with index columns")
        (out / "meta.json").unlink(missing_ok=True)  # the cache is unfinished until meta.json is back
        records, reused = _build_all(plan.jobs, out, config.size, pool)
    _remove_orphans(out, {job.key for job in plan.jobs}, pool.chunks)

    columns, skipped, notes = _index_columns(plan, records)
    skipped = plan.skipped + skipped
    if not columns["row"]:
        raise InputError(config.input, _nothing_usable(config, len(skipped)))
    notes = {**plan.notes, **notes}
    split_meta = _assign_split(columns, plan, config.split)
    studies = len(set(columns["study"]))
    summary = {
        "studies": studies, "series": sum(1 for r in records if r["slices"]), "slices": len(columns["row"]),
        "skipped": hide_names(skipped), "reused_series": reused, "seconds": round(time.perf_counter() - start, 2),
        **notes,
    }
    write_index(out, columns, plan.label_names)
    write_meta(out, {
        "format_version": FORMAT_VERSION, "headct_version": __version__, "source_format": plan.source_format,
        "kind": plan.kind, "size": config.size, "labels": plan.label_names, "split": split_meta,
        "summary": summary, "has_masks": any(r.get("has_mask") for r in records),
        "synthetic": _is_phantom(Path(config.input)),
        **({"channels": plan.channels} if plan.channels else {}),  # C images per slice: shards [S, C, H, W]
    })
    if skipped:
        log.warning("%d files skipped: %s", len(skipped),
                    report_examples([f"{s['file']} ({s['reason']})" for s in skipped]))
    return PrepareResult(cache=out, studies=studies, series=summary["series"], slices=summary["slices"],
                         skipped=skipped, split=split_meta, reused=reused, notes=notes)


def prepare_command(args: argparse.Namespace) -> int:
    """CLI entry: build the cache, print the summary; exit 1 when nothing usable was read."""
    columns = TableColumns(
        path=getattr(args, "path_column", None), patient=getattr(args, "patient_column", None),
        study=getattr(args, "study_column", None), slice=getattr(args, "slice_column", None),
        labels=[c.strip() for c in args.label_columns.split(",") if c.strip()]
        if getattr(args, "label_columns", None) else None,
    )
    try:
        config = PrepareConfig(
            input=args.input, format=args.format, out=args.out, labels=args.labels, size=args.size,
            workers=args.workers, class_map=args.class_map, columns=columns,
            split=SplitConfig(seed=args.seed, fractions=parse_fractions(args.fractions), folds=args.folds),
        )
        result = prepare(config)
    except (InputError, ValueError) as err:
        log.error("%s", err)
        return 2
    print(format_summary(result))
    return 0 if result.slices else 1


def _is_phantom(source: Path) -> bool:
    """True when ``source`` (a folder, or a file in one) is a data set written by ``headct phantom``."""
    folder = source if source.is_dir() else source.parent
    return (folder / PHANTOM_MARKER).is_file()


def format_summary(result: PrepareResult) -> str:
    """The closing lines of ``headct prepare``."""
    split = result.split
    reasons: dict[str, int] = {}
    for item in result.skipped:
        reason = item["reason"].split(" (")[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    lines = [
        f"{result.studies} studies, {result.series} series, {result.slices} slices"
        + (f" ({result.reused} series reused from an earlier run)" if result.reused else ""),
        f"skipped {len(result.skipped)} files"
        + (": " + "; ".join(f"{n} {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])) if reasons else ""),
    ]
    for key, what in (("unlabeled_slices", "slices without a label row (labels unknown)"),
                      ("labels_without_images", "label rows without an image")):
        if result.notes.get(key):
            lines.append(f"{result.notes[key]} {what}")
    lines.append(f"split by {split['how']} (seed {split['seed']}): train {split['n_train']}, "
                 f"val {split['n_val']}, test {split['n_test']} studies")
    lines.append(f"cache: {result.cache}")
    return "\n".join(lines)


def make_plan(config: PrepareConfig, pool: _Pool | None = None) -> Plan:
    """Turn the input into series jobs for its format (DICOM files are staged through ``pool``)."""
    from headct.data import nifti_labels, rsna, stroke, tabular

    source = Path(config.input)
    if not source.exists():
        raise InputError(source, "input not found")
    labels = Path(config.labels) if config.labels else None
    if config.format in ("rsna", "dicom"):
        if config.format == "rsna" and labels is None:
            labels = rsna.find_label_csv(source)
            if labels is None:
                raise InputError(source, "rsna needs --labels CSV (no single *.csv found in the input folder)")
        if pool is None:
            raise ValueError("DICOM formats are read through a _Pool")
        return rsna.plan_dicom(source, labels, pool.stage, source_format=config.format)
    if config.format == "png-folders":
        return stroke.plan_png_folders(source, stroke.parse_class_map(config.class_map))
    if config.format == "csv":
        return tabular.plan_csv(source if source.is_file() or labels is None else labels, config.columns)
    return nifti_labels.plan_nifti(source, labels, config.columns)


# --- the worker: one series → one shard ----------------------------------------

def build_series(job: SeriesJob, cache_dir: str, size: int) -> dict[str, Any]:
    """Read, resample and write one series; returns its sidecar record.

    Unusable files become ``skipped`` entries of the record; a series with no
    usable slice gets a record with 0 slices and no shard.
    """
    skipped: list[dict[str, str]] = []
    warnings: list[str] = []
    pieces: list[Piece] = []
    if job.assemble:  # staged DICOM: already read and resampled, sort them
        headers = [source.header or {} for source in job.sources]
        staged = assemble_staged(headers, Path(cache_dir) / "work", skipped)
        if staged is not None:
            pixels, order, notes = staged
            warnings += notes
            kept = [(i, None, job.sources[i].uid or headers[i]["sop"]) for i in order]
            pieces.append((pixels, kept, tuple(headers[order[0]]["shape"])))
    else:
        pieces = [(resample_slices(stack, size), kept, stack.shape[-2:])
                  for stack, kept in _read_each(job, skipped, warnings, size)]
    mask_lookup = _MaskLookup(job.mask_file, warnings)
    pixels_out, masks_out, kept_all = [], [], []
    for pixels, kept, source_shape in pieces:
        found = mask_lookup.stack([(uid, job.sources[src].name) for src, _, uid in kept], source_shape)
        pixels_out.append(pixels)
        masks_out.append(resample_masks(found, size) if found is not None else None)
        kept_all += kept
    has_mask = any(m is not None for m in masks_out)
    record = {
        "key": job.key, "digest": job.digest(size), "study": job.study, "patient": job.patient,
        "series": job.series, "slices": len(kept_all), "uids": [uid for _, _, uid in kept_all],
        "sources": [src for src, _, _ in kept_all], "frames": [frame for _, frame, _ in kept_all],
        "skipped": skipped, "warnings": warnings, "has_mask": has_mask,
    }
    shard = np.concatenate(pixels_out) if pixels_out else None
    mask_stack = None
    if has_mask and shard is not None:
        mask_stack = np.concatenate([m if m is not None else np.zeros(p.shape, np.uint8)
                                     for m, p in zip(masks_out, pixels_out, strict=True)])
    write_shard(Path(cache_dir), job.key, shard, mask_stack, {**record, "skipped": hide_names(skipped)})
    return record


def hide_names(skipped: list[dict[str, str]]) -> list[dict[str, str]]:
    """Skipped entries as the cache stores them: the file as a hash of its name under the input."""
    return [{**item, "file": short_hash(item["file"])} for item in skipped]


def _nothing_usable(config: PrepareConfig, skipped: int) -> str:
    """What the input holds instead of usable slices, with the --format that would read it."""
    try:
        found = find_dicom_files(config.input)
    except InputError:
        return f"no usable slices with --format {config.format}"
    kinds = dict(found.ignored)
    if found.files:
        kinds["DICOM"] = len(found.files)  # may-be-DICOM files, readable or not
    hints = {"PNG": "png-folders", "JPG": "png-folders", "NIfTI": "nifti", "CSV": "csv", "DICOM": "dicom"}
    usable = {"dicom": ("DICOM",), "rsna": ("DICOM",), "png-folders": ("PNG", "JPG"), "nifti": ("NIfTI",),
              "csv": ("CSV", "PNG", "JPG", "DICOM", "NIfTI")}[config.format]
    other = sorted((n, kind) for kind, n in kinds.items() if kind in hints and kind not in usable)
    message = f"no usable slices with --format {config.format}"
    if skipped:
        message += f" ({skipped} file{'s' if skipped != 1 else ''} skipped, listed above)"
    if other:
        n, kind = other[-1]
        alternative = "rsna or dicom" if hints[kind] == "dicom" else hints[kind]
        return f"{message}; found {n} {kind} file{'s' if n != 1 else ''}: try --format {alternative}"
    return f"{message}; found {found.describe()}" if found.ignored else message


Kept = list[tuple[int, int | None, str]]  # (source index, frame, uid) per slice
Piece = tuple[np.ndarray, Kept, tuple[int, ...]]  # pixels [s, size, size], their slices, source slice shape


def _read_each(job: SeriesJob, skipped: list[dict[str, str]], warnings: list[str], size: int
               ) -> list[tuple[np.ndarray, Kept]]:
    """Sources read one by one, in job order (PNG/JPG, NIfTI volumes, listed DICOM files, rows of C images)."""
    pieces: list[tuple[np.ndarray, Kept]] = []
    for index, source in enumerate(job.sources):
        try:
            if source.reader == "images":
                pixels, uids, frames = read_channels(source.channels or [], size), [source.uid or ""], [None]
            else:
                pixels, uids, frames = _read_source(source.reader, source.path, source.uid, job.study)
        except InputError as err:
            skipped.append({"file": source.name, "reason": err.fault})
            continue
        pieces.append((pixels, [(index, frame, uid) for uid, frame in zip(uids, frames, strict=True)]))
    return pieces


def read_channels(channels: list[tuple[str, str]], size: int) -> np.ndarray:
    """One slice of C 8-bit images ``[1, C, size, size]``, each image padded and resampled on its own
    (the images of a row may differ in size). An unusable image raises an InputError naming its column."""
    from headct.io.png import read_image

    planes = []
    for column, path in channels:
        try:
            volume = read_image(path)
        except InputError as err:
            raise InputError(path, f"{column} image: {err.fault} (row skipped)") from None
        if volume.num_slices != 1:
            raise InputError(path, f"{column} image holds {volume.num_slices} frames, not one (row skipped)")
        planes.append(resample_slices(volume.pixels, size)[0])
    return np.stack(planes)[None]


def _read_source(reader: str, path: str, uid: str | None, study: str
                 ) -> tuple[np.ndarray, list[str], list[int | None]]:
    if reader == "dicom":
        from headct.io.dicom import read_slice

        item = read_slice(path)
        return item.hu[None], [item.sop_uid or uid or short_hash(Path(path).name)], [None]
    if reader == "image":
        from headct.io.png import read_image

        volume = read_image(path)
        base = uid or Path(path).stem
        if volume.num_slices == 1:
            return volume.pixels, [base], [None]
        return volume.pixels, [f"{base}_{i}" for i in range(volume.num_slices)], list(range(volume.num_slices))
    if reader == "nifti":
        from headct.io.nifti import read_nifti

        volume = read_nifti(path)
        count = volume.num_slices
        return volume.pixels, [f"{study}_{i:03d}" for i in range(count)], _file_slice_numbers(path, count)
    raise ValueError(f"unknown reader {reader!r}")


def _file_slice_numbers(path: str, count: int) -> list[int | None]:
    """For each slice in scan order (as read_nifti gives it), its index along the file's third axis.

    Label CSVs (CT-ICH) number slices along the stored third axis; read_nifti
    reorients to inferior-first, which reverses that axis in files stored head first.
    """
    import nibabel as nib

    orientation = nib.io_orientation(nib.load(path).affine)
    if int(orientation[2, 0]) != 2:
        log.warning("%s: third axis is not inferior-superior; slice numbers taken in scan order", Path(path).name)
        return list(range(count))
    return list(range(count)) if orientation[2, 1] > 0 else list(range(count - 1, -1, -1))


class _MaskLookup:
    """Lesion masks of one study (``masks/<study>.npz``: ``uids``, ``masks``), looked up per slice."""

    def __init__(self, mask_file: str | None, warnings: list[str]) -> None:
        self.index: dict[str, int] = {}
        self.masks: np.ndarray | None = None
        self.warnings = warnings
        if mask_file is None:
            return
        try:
            with np.load(mask_file, allow_pickle=False) as data:
                self.masks = np.asarray(data["masks"], dtype=np.uint8)
                self.index = {str(u): i for i, u in enumerate(data["uids"].astype(str))}
        except (OSError, KeyError, ValueError) as err:
            warnings.append(f"{Path(mask_file).name}: unreadable mask file ({type(err).__name__}); no masks")

    def stack(self, slices: list[tuple[str, str]], shape: tuple[int, ...]) -> np.ndarray | None:
        """Masks ``[s, H, W]`` for slices named (uid, source name); None when none is found."""
        if self.masks is None:
            return None
        out = np.zeros((len(slices), *shape), dtype=np.uint8)
        found = False
        for i, (uid, name) in enumerate(slices):
            position = self.index.get(uid, self.index.get(Path(name).stem))
            if position is None:
                continue
            if self.masks.shape[1:] != tuple(shape):
                self.warnings.append(f"mask of {uid} is {self.masks.shape[1:]}, slice is {tuple(shape)}; dropped")
                continue
            out[i] = self.masks[position]
            found = True
        return out if found else None


# --- orchestration helpers -----------------------------------------------------

class _Pool:
    """Runs tasks inline (1 worker) or in a spawn-started process pool; stages DICOM chunks."""

    def __init__(self, workers: int, out: Path, size: int) -> None:
        self.workers = max(1, int(workers))
        self.out, self.size = Path(out), size
        self.executor: ProcessPoolExecutor | None = None
        self.chunks: dict[str, list[tuple[str, str]]] = {}  # staged chunk key → its (path, name) pairs

    def __enter__(self) -> _Pool:
        if self.workers > 1:
            self.executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)

    def imap(self, fn: Callable[..., Any], arg_lists: Iterable[tuple[Any, ...]]) -> Iterable[Any]:
        """Results in completion order (parallel) or in order (inline)."""
        if self.executor is None:
            for args in arg_lists:
                yield fn(*args)
            return
        from concurrent.futures import as_completed

        futures = [self.executor.submit(fn, *args) for args in arg_lists]
        for future in as_completed(futures):
            yield future.result()

    def stage(self, files: list[Path], base: Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """Read every DICOM file once, resampled, in chunks; chunks staged by an earlier run are reused
        when their files' names and content (``file_fingerprint``, taken in the pool) are unchanged.

        Returns the staged headers and the skipped files, both naming files
        (``name``, ``path``) in memory only: the chunk records on disk number them.
        """
        names = [relative_name(path, base) for path in files]
        work = self.out / "work"
        staged: dict[str, dict[str, Any]] = {}
        for start in range(0, len(files), CHUNK_FILES):
            key = f"chunk-{start // CHUNK_FILES:06d}"
            self.chunks[key] = list(zip(map(str, files[start:start + CHUNK_FILES]),
                                        names[start:start + CHUNK_FILES], strict=True))
            record = read_chunk_record(work, key)
            if record is not None:
                staged[key] = record
        records = []
        checks = ((key, [p for p, _ in self.chunks[key]]) for key in staged)
        for key, fingerprints in self.imap(fingerprint_chunk, checks):
            if staged[key]["digest"] == chunk_digest([n for _, n in self.chunks[key]], fingerprints, self.size):
                records.append(staged[key])
        todo = sorted(set(self.chunks) - {r["key"] for r in records})
        with tqdm(total=len(files), desc="reading DICOM", unit="file", disable=len(files) < 200) as bar:
            bar.update(len(files) - sum(len(self.chunks[k]) for k in todo))
            for record in self.restage(todo):
                records.append(record)
                bar.update(len(self.chunks[record["key"]]))
        headers, skipped = [], []
        for record in sorted(records, key=lambda r: r["key"]):
            pairs, fingerprints = self.chunks[record["key"]], record["fingerprints"]
            headers += [{**header, "chunk": record["key"], "path": pairs[header["index"]][0],
                         "name": pairs[header["index"]][1], "fingerprint": fingerprints[header["index"]]}
                        for header in record["headers"]]
            skipped += [{"file": pairs[item["index"]][1], "reason": item["reason"]} for item in record["skipped"]]
        for item in skipped:
            log.warning("%s: %s", item["file"], item["reason"])
        return headers, skipped

    def restage(self, keys: Iterable[str]) -> Iterable[dict[str, Any]]:
        """(Re)read chunks: staged slices are the input of every series built from them."""
        work = str(self.out / "work")
        jobs = (([p for p, _ in self.chunks[k]], [n for _, n in self.chunks[k]], work, k, self.size) for k in keys)
        return self.imap(stage_chunk, jobs)


def _worker_init() -> None:
    import torch

    from headct.distributed import opencv_threads_like_torch

    torch.set_num_threads(1)  # one process per core already
    opencv_threads_like_torch()  # OpenCV too (the resample), or each worker starts a thread per core


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Resampling is many small tensor ops: torch's intra-op threads only add wake-up latency
    (x10 and worse on a busy machine), so the build runs them on one thread, then restores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _build_all(jobs: list[SeriesJob], out: Path, size: int, pool: _Pool) -> tuple[list[dict[str, Any]], int]:
    """Records for every job, reading only the series without a matching finished shard."""
    records: dict[str, dict[str, Any]] = {}
    pending = []
    for job in jobs:
        record = read_record(out, job.key)
        if record is not None and record.get("digest") == job.digest(size):
            names = {short_hash(source.name): source.name for source in job.sources}
            records[job.key] = {**record, "skipped": [{**item, "file": names.get(item["file"], item["file"])}
                                                      for item in record["skipped"]]}
        else:
            pending.append(job)
    reused = len(records)
    if reused:
        log.info("resuming: %d of %d series already in the cache", reused, len(jobs))
    needed = {source.header["chunk"] for job in pending for source in job.sources if source.header}
    missing = sorted(k for k in needed if not (out / "work" / f"{k}.npy").is_file())
    if missing:  # staged slices were cleared after an earlier finished build
        for _ in pool.restage(missing):
            pass
    with tqdm(total=len(jobs), initial=reused, desc="caching", unit="series") as bar:
        for record in pool.imap(build_series, ((job, str(out), size) for job in pending)):
            records[record["key"]] = record
            for item in record["skipped"]:
                log.warning("%s: %s", item["file"], item["reason"])
            bar.update(1)
    return [records[job.key] for job in jobs], reused


def _remove_orphans(out: Path, keys: set[str], chunks: dict[str, Any]) -> None:
    """Shards of series no longer in the input (an earlier run on other data) go; so do the staged
    slices, now in the shards (their small headers stay, so a re-run reads no file again)."""
    for folder in ("shards", "masks"):
        for path in (out / folder).glob("*"):
            if path.suffix in (".npy", ".json") and path.stem not in keys:
                path.unlink(missing_ok=True)
    for path in (out / "work").glob("*"):
        if path.suffix == ".npy" or path.stem not in chunks:
            path.unlink(missing_ok=True)


def _index_columns(plan: Plan, records: list[dict[str, Any]]
                   ) -> tuple[dict[str, list[Any]], list[dict[str, str]], dict[str, Any]]:
    """index.csv columns (split filled later), skipped files, and label-matching notes."""
    names = plan.label_names
    columns: dict[str, list[Any]] = {name: [] for name in (*INDEX_COLUMNS, *names)}
    skipped: list[dict[str, str]] = []
    unlabeled: list[str] = []
    missing_frames = 0
    order = sorted(range(len(plan.jobs)), key=lambda i: (plan.jobs[i].study, plan.jobs[i].key))
    for i in order:
        job, record = plan.jobs[i], records[i]
        skipped += record["skipped"]
        for offset, (uid, source, frame) in enumerate(zip(record["uids"], record["sources"], record["frames"],
                                                          strict=True)):
            vector = job.labels_for(source, frame)
            if vector is None:
                vector = (-1,) * len(names)
                if names:
                    unlabeled.append(uid)
            row = (len(columns["row"]), job.study, job.patient, job.series, offset, uid, job.key, offset, "", -1)
            for name, value in zip(INDEX_COLUMNS, row, strict=True):
                columns[name].append(value)
            for name, value in zip(names, vector, strict=True):
                columns[name].append(int(value))
        if job.frame_labels:
            missing_frames += len(set(job.frame_labels) - {int(f) for f in record["frames"] if f is not None})
    notes: dict[str, Any] = {}
    if names:
        notes.update(unlabeled_slices=len(unlabeled), unlabeled_examples=unlabeled[:5])
        if unlabeled:
            log.warning("%d slices have no label row (labels left unknown): %s", len(unlabeled),
                        report_examples(unlabeled))
    if missing_frames:
        log.warning("%d label rows name slices beyond their volume", missing_frames)
        notes["labels_without_images"] = plan.notes.get("labels_without_images", 0) + missing_frames
    return columns, skipped, notes


def _assign_split(columns: dict[str, list[Any]], plan: Plan, config: SplitConfig) -> dict[str, Any]:
    """Fill the split and fold columns by study groups; returns meta.json's ``split``."""
    studies = list(dict.fromkeys(columns["study"]))
    position = {s: i for i, s in enumerate(studies)}
    patients: list[str | None] = [None] * len(studies)
    labels = np.zeros((len(studies), len(plan.label_names)), dtype=np.int8)
    study_of_row = np.array([position[s] for s in columns["study"]], dtype=np.int64)
    for row, study in enumerate(study_of_row):
        patients[study] = patients[study] or columns["patient"][row] or None
    if plan.label_names and len(study_of_row):
        matrix = np.array([columns[name] for name in plan.label_names], dtype=np.int8).T
        np.maximum.at(labels, study_of_row, np.clip(matrix, 0, 1))
    groups, how = choose_groups(studies, patients, image_level=plan.image_level)
    result = split_studies(studies, groups, labels, config, how)
    columns["split"] = result.split[study_of_row].tolist()
    columns["fold"] = result.fold[study_of_row].tolist()
    return {"how": how, "seed": config.seed, "fractions": list(config.fractions), "folds": config.folds,
            "n_train": result.counts["train"], "n_val": result.counts["val"], "n_test": result.counts["test"]}
