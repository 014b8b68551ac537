"""The headct command: one-line errors with hints, verbosity, help text, the models table."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pytest

from headct.cli import COMMANDS, build_parser, log_level, main


def _error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_a_run_folder_instead_of_its_checkpoint_asks_did_you_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "config.json").write_text("{}")
    assert main(["evaluate", str(run), "--data", str(tmp_path / "cache"), "--out", str(tmp_path / "eval")]) == 1
    lines = _error_lines(capsys)
    assert lines[0] == f"headct evaluate: {run}: not a checkpoint (config.json missing)"
    assert lines[1] == f"  hint: {run} is a training run; did you mean {run / 'best'}?"
    assert len(lines) == 2  # no traceback without -vv


def test_a_missing_checkpoint_is_one_line_with_a_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert main(["predict", str(tmp_path), "--model", str(missing), "--out", str(tmp_path / "out")]) == 1
    lines = _error_lines(capsys)
    assert lines[0].startswith(f"headct predict: {missing}: not a checkpoint")
    assert "RUN/best" in lines[1] and len(lines) == 2


def test_a_missing_cache_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(tmp_path / "nocache"), "--model", "mobilenetv2", "--task", "rsna",
                 "--out", str(tmp_path / "run")]) == 1
    lines = _error_lines(capsys)
    assert lines[0].startswith("headct train: ") and "no meta.json" in lines[0]
    assert "headct prepare" in lines[1]
    assert not (tmp_path / "run").exists()


def test_an_unknown_model_fails_before_the_cache_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The cache does not exist: were it read first, the error would be about the cache.
    assert main(["train", "--data", str(tmp_path / "nocache"), "--model", "effnet-2dd", "--task", "rsna",
                 "--out", str(tmp_path / "run")]) == 1
    lines = _error_lines(capsys)
    assert lines[0].startswith("headct train: unknown model 'effnet-2dd'")
    assert lines[1] == "  hint: did you mean effnet-2d? headct models describes each"


def test_a_split_typo_lists_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "ckpt", "--data", "c", "--out", "o", "--split", "tset"])
    assert stop.value.code == 2
    assert "invalid choice: 'tset' (choose from 'train', 'val', 'test')" in capsys.readouterr().err


def test_traceback_only_with_vv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["predict", str(tmp_path), "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]
    assert main([*argv, "-vv"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "CheckpointError" in err
    assert main(["-v", *argv]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_verbosity_before_and_after_the_command() -> None:
    parser = build_parser()
    for argv, count in ((["models"], 0), (["-v", "models"], 1), (["models", "-v"], 1), (["-v", "models", "-v"], 2),
                        (["models", "-vv"], 2)):
        args = parser.parse_args(argv)
        assert args.verbose + getattr(args, "command_verbose", 0) == count, argv
    assert [log_level(n) for n in (0, 1, 2, 3)] == [logging.WARNING, logging.INFO, logging.DEBUG, logging.DEBUG]


@pytest.mark.parametrize(("argv", "extra"), [
    (["serve", "--model", "m"], "serve"),
    (["export", "m", "--onnx", "m.onnx"], "onnx"),
    (["predict", "p", "--model", "m", "--out", "o", "--runtime", "onnx"], "onnx"),
])
def test_a_missing_extra_says_what_to_install(argv: list[str], extra: str, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for module in ("fastapi", "onnxruntime"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    assert main(argv) == 1
    lines = _error_lines(capsys)
    assert lines[0].startswith(f"headct {argv[0]}: this needs the optional package")
    assert lines[1] == f'  hint: pip install -e ".[{extra}]"  (or: pip install "headct[{extra}]")'


def test_an_import_error_inside_an_extra_becomes_the_hint(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    def needs_highdicom(args: argparse.Namespace) -> int:
        import highdicom_is_not_a_module  # noqa: F401  (stands for any import of a missing package)
        return 0

    def needs_pynetdicom(args: argparse.Namespace) -> int:
        raise ModuleNotFoundError("No module named 'pynetdicom'", name="pynetdicom")

    monkeypatch.setitem(COMMANDS, "models", ("", COMMANDS["models"][1], needs_pynetdicom))
    assert main(["models"]) == 1
    assert '".[dicom]"' in _error_lines(capsys)[1]
    monkeypatch.setitem(COMMANDS, "models", ("", COMMANDS["models"][1], needs_highdicom))
    with pytest.raises(ModuleNotFoundError):  # not an optional package: a broken install keeps its traceback
        main(["models"])


def test_every_option_has_help_and_shows_its_default() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "`" not in parser.format_help()
    for name, command in sub.choices.items():
        text = command.format_help()
        assert "`" not in text, name
        assert "TrainConfig." not in text, name
        for action in command._actions:
            assert action.help and len(action.help) > 8, (name, action.dest)
    predict_help = sub.choices["predict"].format_help()
    assert "(default: torch)" in predict_help
    train_help = " ".join(sub.choices["train"].format_help().split())
    assert "peak learning rate of AdamW (issue 13's held-back real CT: 2e-3 without early stop beat 3e-4 with patience 5) (default: 0.002)" in train_help
    assert "show progress bars (default: true)" in train_help
    assert "(default: none)" in train_help
    evaluate_help = " ".join(sub.choices["evaluate"].format_help().split())
    assert "{train,val,test}" in evaluate_help and "(default: test)" in evaluate_help


def test_models_is_a_table_and_builds_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from headct.models import list_models, registry

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("headct models built a model")

    monkeypatch.setattr(registry, "build_model", refuse)
    for name in list_models():
        monkeypatch.setitem(registry._BUILDERS, name, _Unbuildable(registry._BUILDERS[name]))
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "input", "description"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert sorted(rows) == list_models()
    assert "whole series" in rows["study-seq"] and "slice ± 1" in rows["effnet-2.5d"]
    assert "one slice" in rows["effnet-2d"] and "EfficientNet-B0" in rows["effnet-2d"]


class _Unbuildable:
    """A builder stand-in that keeps the signature and docstring but fails when called."""

    def __init__(self, builder: object) -> None:
        self.__wrapped__ = builder
        self.__doc__ = builder.__doc__

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("headct models built a model")


def test_log_lines_never_share_a_line_with_a_progress_bar() -> None:
    import re
    import subprocess

    code = (
        "import logging, sys\n"
        "from tqdm import tqdm\n"
        "import headct.cli as cli\n"
        "def run(args):\n"
        "    for i in tqdm(range(3), desc='working', disable=False, mininterval=0):\n"
        "        logging.getLogger('headct.test').info('step %d done', i)\n"
        "    return 0\n"
        "cli.COMMANDS['models'] = ('', cli._add_models, run)\n"
        "sys.exit(cli.main(['models', '-v']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    segments = re.split(r"[\r\n]", done.stderr)
    logged = [s for s in segments if "step " in s]
    assert logged == [f"INFO headct.test: step {i} done" for i in range(3)]  # each alone on its line
    assert any(s.startswith("working:") for s in segments)


@pytest.mark.parametrize(("argv", "absent"), [
    (["--help"], ("timm", "torch")),
    (["phantom", "--help"], ("timm", "torch")),
    (["phantom", "--out", "{tmp}", "--studies", "1", "--size", "32", "--slices", "2"], ("timm", "torch")),
    (["models"], ("timm", "torchvision")),  # the registry's modules define torch modules, but no timm encoder
])
def test_quick_commands_do_not_import_heavy_packages(tmp_path: Path, argv: list[str], absent: tuple[str, ...]) -> None:
    import subprocess

    argv = [arg.replace("{tmp}", str(tmp_path / "phantom")) for arg in argv]
    code = (
        "import sys\n"
        "import headct.cli as cli\n"
        "try:\n"
        f"    code = cli.main({argv!r})\n"
        "except SystemExit as stop:\n"
        "    code = stop.code\n"
        f"print('LOADED', [m for m in {list(absent)!r} if m in sys.modules], file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stderr.splitlines()
