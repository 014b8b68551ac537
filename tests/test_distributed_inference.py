"""`headct predict` and `headct evaluate` under torchrun: 2 gloo processes give what one process gives."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from headct.checkpoint import save_checkpoint
from headct.distributed import DistInfo, merge_in_order, rank_share
from headct.models import build_model

LABELS = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
SIZE = 32
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def test_each_process_gives_opencv_the_threads_torch_has() -> None:
    import cv2

    from headct.distributed import opencv_threads_like_torch

    torch_before, cv2_before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        torch.set_num_threads(1)  # what torchrun's OMP_NUM_THREADS=1 gives each process
        cv2.setNumThreads(8)
        assert opencv_threads_like_torch() == 1 and cv2.getNumThreads() == 1
    finally:
        torch.set_num_threads(torch_before)
        cv2.setNumThreads(cv2_before)


def test_rank_shares_cover_every_item_once_and_merge_back_in_order() -> None:
    items = list("abcdefg")
    shares = [rank_share(items, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert [[item for _, item in share] for share in shares] == [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    # merging what every rank made, as all_gather would hand it over, restores the single-process order
    made = [[(position, item.upper()) for position, item in share] for share in shares]
    merged = sorted((pair for part in made for pair in part), key=lambda pair: pair[0])
    assert [item for _, item in merged] == list("ABCDEFG")
    assert merge_in_order(made[0], DistInfo()) == ["A", "D", "G"]  # one process: its own, in order


def _checkpoint(path: Path, **fields) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_model("mobilenetv2", len(LABELS)), path, size=SIZE, task="rsna", labels=LABELS,
                           label_kind="multilabel", **fields)


def _headct(*args: str, ranks: int = 1) -> subprocess.CompletedProcess:
    if ranks == 1:
        cmd = [sys.executable, "-m", "headct.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               "-m", "headct.cli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_predict_under_torchrun_matches_one_process(tmp_path: Path, write_ct_series: Callable) -> None:
    studies = tmp_path / "studies"
    for number in range(5):  # odd: the two ranks get 3 and 2 studies
        write_ct_series(studies / f"study{number}", slices=3 + number, size=40, seed=number)
    (studies / "zz_broken").mkdir()
    (studies / "zz_broken" / "junk.dcm").write_bytes(b"not a DICOM file")
    checkpoint = _checkpoint(tmp_path / "ckpt", thresholds=dict.fromkeys(LABELS, 0.5), temperature=1.5)

    one = _headct("predict", str(studies), "--model", str(checkpoint), "--out", str(tmp_path / "one"),
                  "--device", "cpu")
    two = _headct("predict", str(studies), "--model", str(checkpoint), "--out", str(tmp_path / "two"),
                  "--device", "cpu", ranks=2)

    single, merged = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in single.iterdir()) == sorted(p.name for p in merged.iterdir())
    assert len(list(single.glob("*.json"))) == 5
    for path in single.iterdir():
        assert (merged / path.name).read_bytes() == path.read_bytes(), path.name
    rows = (single / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + sum(3 + n for n in range(5)) + 5  # header, slices, studies
    summary = [line for line in two.stdout.splitlines() if "studies → " in line]
    assert len(summary) == 1  # only rank 0 reports
    assert summary[0].replace(str(merged), "OUT") == one.stdout.strip().splitlines()[-1].replace(str(single), "OUT")

    # the same studies as one flat folder (RSNA's layout): the two ranks share its header scan and its studies
    flat = tmp_path / "flat"
    flat.mkdir()
    for file in studies.rglob("*.dcm"):
        (flat / f"{file.parent.name}_{file.name}").write_bytes(file.read_bytes())
    _headct("predict", str(flat), "--model", str(checkpoint), "--out", str(tmp_path / "flat_out"), "--device", "cpu",
            ranks=2)
    for path in single.glob("*.json"):
        assert (tmp_path / "flat_out" / path.name).read_bytes() == path.read_bytes(), path.name


@pytest.mark.slow
def test_evaluate_under_torchrun_matches_one_process(cache: Path, tmp_path: Path) -> None:
    # no thresholds or temperature stored: both runs fit them on the validation split first
    for name in ("one", "two"):
        _checkpoint(tmp_path / f"ckpt_{name}")
    _headct("evaluate", str(tmp_path / "ckpt_one"), "--data", str(cache), "--out", str(tmp_path / "one"),
            "--device", "cpu")
    two = _headct("evaluate", str(tmp_path / "ckpt_two"), "--data", str(cache), "--out", str(tmp_path / "two"),
                  "--device", "cpu", ranks=2)

    assert two.stdout.count("metrics:") == 1  # only rank 0 writes and reports
    for name in ("predictions.csv", "metrics.json"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    rows = (tmp_path / "one" / "predictions.csv").read_text().splitlines()
    assert sum(row.startswith("slice,") for row in rows) == 4 * 6  # every test slice (4 series x 6), once
    fitted = [(tmp_path / f"ckpt_{name}" / "config.json").read_text() for name in ("one", "two")]
    assert fitted[0] == fitted[1] and '"temperature"' in fitted[0]
    assert not np.isnan(float(rows[1].split(",")[4]))
