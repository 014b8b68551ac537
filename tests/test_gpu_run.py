"""benchmarks/gpu_run.py: deadlines that stop a stage and its children, budgets, the one-folder output."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


gpu_run = _load("gpu_run")
deadline = _load("deadline")


def test_a_command_past_its_deadline_is_stopped_with_its_children(tmp_path: Path) -> None:
    child = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {child}; wait"
    code, seconds = deadline.run_until(["sh", "-c", script], 2.0)
    assert code is None and 1.5 < seconds < 20
    pid = int(child.read_text())
    for _ in range(50):  # the group got SIGTERM; give the child a moment to go
        if not _alive(pid):
            break
        time.sleep(0.1)
    assert not _alive(pid)
    assert deadline.run_until(["sh", "-c", "exit 3"], 30)[0] == 3


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split()[2] == "Z")  # a zombie is gone


def test_each_stage_gets_its_share_of_what_is_left_and_unused_time_moves_on(tmp_path: Path, monkeypatch) -> None:
    script = tmp_path / "stage.py"
    script.write_text("import sys, json, pathlib; pathlib.Path(sys.argv[1]).write_text(json.dumps(sys.argv[2:]))\n")
    stages = [gpu_run.Stage(name, share, [f"{name}.json"], lambda s, out, work, name=name: [
        str(script), str(out / f"{name}.json"), f"{s:.1f}"]) for name, share in (("a", 0.5), ("b", 0.25), ("c", 0.25))]
    monkeypatch.setattr(gpu_run, "smoke_stages", lambda cpus: stages)
    monkeypatch.setattr(gpu_run, "NEEDED_MODULES", ("json",))
    out = tmp_path / "out"
    assert gpu_run.main(["--smoke", "--minutes", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["a", "b", "c"]
    budgets = [summary["stages"][n]["budget_s"] for n in "abc"]
    assert 40 < budgets[0] <= 60  # half of 120 s (less what the preflight took)
    assert budgets[1] > 40 and budgets[2] > 40  # not 30 s each: "a" finished at once, its time went on
    assert all(summary["stages"][n]["status"] == "done" for n in "abc")
    assert json.loads((out / "a.json").read_text()) == [f"{budgets[0]:.1f}"]
    assert summary["files"]["within_limits"] and len(summary["files"]["names"]) == 5  # 3 + summary + log


def test_target_lines_say_met_not_met_and_not_measured(tmp_path: Path) -> None:
    (tmp_path / "gpu_targets.json").write_text(json.dumps({"targets": {
        "fast": {"value": 8000.0, "unit": "img/s", "target": 7000.0, "better": ">=", "met": True},
        "small": {"value": 2.0 * 2**30, "unit": "bytes", "target": 1.5 * 2**30, "better": "<=", "met": False},
        "late": {"value": None, "unit": "ratio", "target": 0.9, "better": ">=", "met": None,
                 "skipped": "time budget of 40 s spent"}}}))
    (tmp_path / "end_to_end.json").write_text(json.dumps({"target": {
        "value": 12.5, "unit": "slices/s", "target": 5000.0, "met": None}}))
    lines = gpu_run.target_lines(tmp_path)
    assert lines[0] == "target fast: 8,000 img/s (bar >= 7,000 img/s): met"
    assert lines[1] == "target small: 2.00 GiB (bar <= 1.50 GiB): NOT met"
    assert lines[2] == "target late: not measured (bar >= 0.9 ratio): n/a (time budget of 40 s spent)"
    assert lines[3] == "target end_to_end_slices_per_s: 12.5 slices/s (bar >= 5,000 slices/s): n/a"


def test_more_than_eight_files_is_over_the_limit(tmp_path: Path) -> None:
    for n in range(9):
        (tmp_path / f"f{n}.json").write_text("{}")
    assert not gpu_run.check_files(tmp_path)["within_limits"]
    (tmp_path / "f8.json").unlink()
    assert gpu_run.check_files(tmp_path)["within_limits"]


def test_without_cuda_the_gpu_run_refuses_to_start_and_says_why(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    assert gpu_run.main(["--out", str(tmp_path), "--stages", "targets"]) == 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "no CUDA device" in summary["preflight"]["problem"] and summary["stages"] == {}


@pytest.mark.parametrize("smoke", [False, True], ids=["gpu", "smoke"])
def test_every_stage_passes_flags_its_script_knows(smoke: bool, tmp_path: Path) -> None:
    """The GPU run is one shot: a misspelt flag must fail here, not on the H200."""
    stages = (gpu_run.smoke_stages if smoke else gpu_run.gpu_stages)(16)
    assert [s.name for s in stages] == ["targets", "end_to_end", "seeds", "localisation"]
    assert sum(s.share for s in stages) == pytest.approx(1.0)
    for stage in stages:
        script, *argv = stage.args(100.0, tmp_path, tmp_path / "work")
        args = _load(script.removesuffix(".py")).build_parser().parse_args(argv)
        assert args.time_budget == 100.0
        written = [v for v in vars(args).values() if isinstance(v, str) and v.startswith(str(tmp_path))]
        outputs = {Path(v).name for v in written if not v.startswith(str(tmp_path / "work"))}
        assert outputs == set(stage.outputs), stage.name  # results in the folder, work files outside it
        if not smoke:
            assert getattr(args, "device", "cuda") in ("cuda", None)


def test_the_targets_stage_can_remeasure_only_some_targets(tmp_path: Path) -> None:
    stages = [gpu_run.only_targets(s, ["train_cache_vs_synthetic", "strokenext_tiny_peak_memory"])
              for s in gpu_run.gpu_stages(16)]
    script, *argv = stages[0].args(100.0, tmp_path, tmp_path / "work")
    args = _load("gpu_targets").build_parser().parse_args(argv)
    assert args.only == ["train_cache_vs_synthetic", "strokenext_tiny_peak_memory"]
    assert [s.name for s in stages] == ["targets", "end_to_end", "seeds", "localisation"]


def test_regenerating_the_results_page_keeps_hand_written_sections_and_replaces_generated_ones() -> None:
    seeds = _load("seeds_comparison")
    page = ("# Results\n\nintro\n\n## The seeds' comparison on phantoms\n\nold table\n\n"
            "## On a plain CPU (issue 17)\n\nhand-written\n\n## The GPU run (issue 16)\n\nNot run yet.\n")
    merged = seeds.merge_sections(page, [["## The GPU run (issue 16)", "", "ran: 493 s"],
                                         ["## Something new", "", "figures"]])
    assert merged == ("# Results\n\nintro\n\n## The seeds' comparison on phantoms\n\nold table\n\n"
                      "## On a plain CPU (issue 17)\n\nhand-written\n\n## The GPU run (issue 16)\n\nran: 493 s\n\n"
                      "## Something new\n\nfigures\n")


def test_a_seeds_result_cut_short_before_any_model_leaves_its_section_alone(tmp_path: Path) -> None:
    seeds = _load("seeds_comparison")
    page = tmp_path / "results.md"
    page.write_text("# Results\n\n## The seeds' comparison on phantoms\n\nthe CPU table\n")
    seeds.write_markdown({"label": "gpu", "models": {}}, page, tmp_path / "seeds.json", ["seeds"])
    assert page.read_text() == "# Results\n\n## The seeds' comparison on phantoms\n\nthe CPU table\n"
