"""The headct command: one sub-command per job, each ending with where its outputs are.

Each sub-command has a ``_add_<name>`` function that declares its arguments and
a ``_run_<name>`` function that imports the module doing the work (lazily, so
``headct --help`` stays fast) and returns an exit code.

:func:`main` turns headct's own errors (``headct.errors``), file-system errors
and a missing optional package into one line, ``headct CMD: message``, plus a
hint when there is one, and a non-zero exit code; ``-vv`` adds the traceback.
``-v`` (INFO) and ``-vv`` (DEBUG) work before or after the sub-command.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from headct import __version__
from headct.errors import (
    CheckpointError,
    HeadCTError,
    InputError,
    missing_extra,
    require_extra,
)

log = logging.getLogger("headct")

SPLITS = ("train", "val", "test")  # headct.data.splits.SPLITS, kept here so --help imports nothing


# --- phantom ---------------------------------------------------------------

def _add_phantom(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="output folder (required unless only --preview is asked for)")
    p.add_argument("--studies", type=int, default=20, help="number of studies")
    p.add_argument("--layout", choices=["rsna", "png-folders"], default="rsna",
                   help="rsna: DICOM series plus an RSNA label CSV; png-folders: 8-bit PNG slices in one "
                        "folder per class (TEKNOFEST layout)")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same data)")
    p.add_argument("--difficulty", type=float, default=1.0, help="0 easy .. 2 hard")
    p.add_argument("--size", type=int, default=512, help="slice size in pixels")
    p.add_argument("--slices", type=int, default=None, help="slices per study (default: from the size)")
    p.add_argument("--preview", metavar="PNG", help="write a montage of slices x lesion types to PNG")
    p.add_argument("--tilt", type=float, default=0.0, metavar="DEG",
                   help="gantry tilt in degrees: the same heads on tilted planes (rsna layout; ~30x slower to render)")
    p.add_argument("--workers", type=int, default=1, help="processes rendering studies (same files for any number)")


def _run_phantom(args: argparse.Namespace) -> int:
    from headct.phantom import phantom_command

    return phantom_command(args)


# --- prepare ---------------------------------------------------------------

def _add_prepare(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="DICOM folder, PNG class folders, CSV file or NIfTI folder")
    p.add_argument("--format", required=True, choices=["dicom", "rsna", "png-folders", "csv", "nifti"],
                   help="rsna: DICOM tree + ID_<uid>_<subtype> label CSV; dicom: DICOM tree, no labels; "
                        "png-folders: one folder per class; csv: CSV of image paths and labels (INPUT is the CSV); "
                        "nifti: NIfTI volumes + per-slice label CSV (CT-ICH layout)")
    p.add_argument("--labels", help="label CSV (rsna, nifti; optional for dicom)")
    p.add_argument("--out", required=True, help="cache directory")
    p.add_argument("--size", type=int, default=256, help="resample every slice to SIZE x SIZE")
    p.add_argument("--workers", type=int, default=1, help="processes reading and resampling series")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--fractions", default="0.8,0.1,0.1", help="train,val,test fractions")
    p.add_argument("--folds", type=int, default=0, help="also assign k folds (0: none)")
    p.add_argument("--class-map", default=None,
                   help="png-folders: folder=class pairs, e.g. 'normal=non-stroke,bleed=hemorrhagic'")
    p.add_argument("--path-column", default=None,
                   help="csv: image path column (default: path, image, file, ...); several, comma-separated "
                        "(e.g. brain,bone), stack each row's images as channels")
    p.add_argument("--patient-column", default=None,
                   help="csv/nifti: patient column, hashed before storing (default: patient, PatientNumber, ...)")
    p.add_argument("--study-column", default=None, help="csv: study column (default: study, study_id, ...)")
    p.add_argument("--slice-column", default=None,
                   help="csv/nifti: slice order/number column (default: slice, SliceNumber, ...)")
    p.add_argument("--label-columns", default=None, help="csv/nifti: label columns a,b,c (default: all others)")


def _run_prepare(args: argparse.Namespace) -> int:
    from headct.data.prepare import prepare_command

    return prepare_command(args)


# --- train -----------------------------------------------------------------

def _add_train(p: argparse.ArgumentParser) -> None:
    from headct.training.config import config_fields

    p.add_argument("--config", metavar="YAML", help="YAML file of the options below (flags given here win)")
    p.add_argument("--resume", metavar="RUN", help="continue a stopped run from RUN/train_state.pt")
    for f in config_fields():
        # Every TrainConfig field is a flag; the parser default is "not given" so YAML values survive,
        # and the help shows the field's own default.
        is_bool = f.type in (bool, "bool")
        extra = {"nargs": "?", "const": "true"} if is_bool else {}
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=argparse.SUPPRESS,
                       metavar="BOOL" if is_bool else f.name.upper(),
                       help=f"{f.metadata['help']} (default: {_shown_default(f)})", **extra)


def _shown_default(f: dataclasses.Field) -> str:
    if f.default is dataclasses.MISSING:
        return "empty"  # a default_factory: an empty dict
    if f.default is None:
        return "none"
    return str(f.default).lower() if isinstance(f.default, bool) else str(f.default)


def _run_train(args: argparse.Namespace) -> int:
    from headct.train import train_command

    return train_command(args)


def _add_cv(p: argparse.ArgumentParser) -> None:
    _add_train(p)  # every training flag; --resume and --fold are refused by the command
    p.add_argument("--folds", default=None, metavar="K,K", help="run only these folds (default: all the cache has)")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples of patients for the intervals")


def _run_cv(args: argparse.Namespace) -> int:
    from headct.cv import cv_command

    return cv_command(args)


# --- evaluate / compare ----------------------------------------------------

def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint folder (RUN/best after headct train)")
    p.add_argument("--data", required=True, help="cache folder made by headct prepare")
    p.add_argument("--split", default="test", choices=SPLITS, help="which split of the cache to evaluate")
    p.add_argument("--out", required=True, help="output folder: metrics.json, predictions.csv, report.html")
    p.add_argument("--batch-size", type=int, default=32, help="slices per forward pass")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")


def _run_evaluate(args: argparse.Namespace) -> int:
    from headct.evaluate import evaluate_command

    return evaluate_command(args)


def _add_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("eval_a", help="the first evaluation's output folder (headct evaluate --out)")
    p.add_argument("eval_b", help="the second evaluation's output folder, on the same split")
    p.add_argument("--json", help="also write the tests to this JSON file")
    p.add_argument("--bootstrap", type=int, default=2000, help="paired bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def _run_compare(args: argparse.Namespace) -> int:
    from headct.compare import compare_command

    return compare_command(args)


def _add_calibrate(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint folder to recalibrate (RUN/best after headct train)")
    p.add_argument("--data", required=True, help="cache of the site's labelled studies")
    p.add_argument("--split", choices=["val", "test", "all"], default="val", help="the studies to calibrate on")
    p.add_argument("--target-sensitivity", type=float, default=None, metavar="S",
                   help="per class, the most specific study-level threshold with sensitivity >= S "
                        "(default: F1-best thresholds)")
    p.add_argument("--out", required=True, help="the new checkpoint directory")
    p.add_argument("--batch-size", type=int, default=32, help="slices per forward pass")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")


def _run_calibrate(args: argparse.Namespace) -> int:
    from headct.recalibrate import calibrate_command

    return calibrate_command(args)


# --- explain / predict / serve / export ------------------------------------

def _add_explain(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint folder (RUN/best after headct train)")
    p.add_argument("--data", required=True, help="cache folder made by headct prepare")
    p.add_argument("--out", required=True, help="output folder for the overlays and scores")
    p.add_argument("--split", default="test", choices=SPLITS, help="which split of the cache to explain")
    p.add_argument("--score", action="store_true", help="score maps against lesion masks")
    p.add_argument("--limit", type=int, default=64, help="slices to explain")
    p.add_argument("--layer", action="append", default=None, metavar="MODULE",
                   help="Grad-CAM target layer by module path (repeatable: the maps are averaged); default: the model's")
    p.add_argument("--method", default=None, metavar="NAME",
                   help="map method (pytorch-grad-cam): gradcam, hirescam, layercam, gradcam++ or xgradcam; "
                        "default: the model's")
    p.add_argument("--head-mask", action=argparse.BooleanOptionalAction, default=None,
                   help="zero the maps outside the head (air); default: the model's")
    p.add_argument("--tolerance", type=int, default=None,
                   help="pointing-game tolerance in pixels (default: 15 px at 224 px, scaled to the cache size)")


def _run_explain(args: argparse.Namespace) -> int:
    from headct.explain import explain_command

    return explain_command(args)


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="DICOM file/series/study/folder of studies, PNG or NIfTI")
    p.add_argument("--model", required=True, help="checkpoint folder (RUN/best after headct train)")
    p.add_argument("--out", required=True, help="output folder: one JSON per study and predictions.csv")
    p.add_argument("--overlays", action="store_true",
                   help="also write Grad-CAM overlays (PNG) of every positive slice to OUT/overlays/")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="onnx runs onnxruntime on the CPU (the onnx extra)")
    p.add_argument("--device", default=None, help="torch runtime: cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--dicom-out", metavar="DIR",
                   help="also write a DICOM SR and Grad-CAM secondary captures per study here (the dicom extra)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="predict every study again (default: skip studies whose JSON is already in --out)")
    p.add_argument("--series", choices=["auto", "all"], default="auto",
                   help="auto: analyse the one series the rules choose per study; all: every series")
    p.add_argument("--series-rules", metavar="YAML", help="series selection rules (see headct.io.series)")


def _run_predict(args: argparse.Namespace) -> int:
    if args.runtime == "onnx":
        require_extra("onnx", "onnx", "onnxruntime")
    from headct.predict import predict_command

    if args.dicom_out:
        require_extra("dicom", "highdicom")
        from headct.dicom_out import results_writer

        return predict_command(args, on_result=results_writer(args.dicom_out))
    return predict_command(args)


def _add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder (RUN/best after headct train)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="onnx runs onnxruntime on the CPU (the onnx extra)")
    p.add_argument("--max-upload-mb", type=float, default=512, help="largest request body (413 above)")
    p.add_argument("--max-files", type=int, default=2000, help="most files per upload or zip (413 above)")
    p.add_argument("--workers", type=int, default=2,
                   help="predictors inferring side by side, each with CPU cores / workers threads")
    p.add_argument("--max-temp-mb", type=float, default=4096,
                   help="temporary disk all uploads together may hold (503 beyond it)")
    p.add_argument("--upload-timeout", type=float, default=300, help="seconds a whole upload may take (408 after)")
    p.add_argument("--keep-alive-s", type=int, default=5, help="seconds an idle keep-alive connection stays open")
    p.add_argument("--keep-results-s", type=float, default=3600,
                   help="seconds the viewer keeps each predicted study (in a temporary folder)")


def _run_serve(args: argparse.Namespace) -> int:
    require_extra("serve", "fastapi", "uvicorn")
    if args.runtime == "onnx":
        require_extra("onnx", "onnx", "onnxruntime")
    from headct.serve import serve_command

    return serve_command(args)


def _add_listen(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder (RUN/best after headct train)")
    p.add_argument("--ae-title", default="HEADCT", help="this node's AE title (called AE title it answers to)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--port", type=int, default=11112, help="DICOM port to listen on")
    p.add_argument("--spool", required=True, help="folder for received instances (survives restarts)")
    p.add_argument("--quiet-seconds", type=float, default=10.0, help="a study is complete after this long quiet")
    p.add_argument("--send-to", metavar="AET@HOST:PORT", help="C-STORE the SR and captures to this DICOM node")
    p.add_argument("--stow", metavar="URL", help="STOW-RS the SR and captures to this DICOMweb URL")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="onnx runs onnxruntime on the CPU (the onnx extra)")


def _run_listen(args: argparse.Namespace) -> int:
    from headct.listen import listen_command

    return listen_command(args)


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint folder (RUN/best after headct train)")
    p.add_argument("--onnx", required=True, metavar="FILE",
                   help="ONNX file to write (its config goes beside it as FILE.config.json)")


def _run_export(args: argparse.Namespace) -> int:
    require_extra("onnx", "onnx", "onnxruntime")
    from headct.export import export_command

    return export_command(args)


# --- bench / demo / models -------------------------------------------------

def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model name (see headct models)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--img-size", type=int, default=256, help="input size in pixels")
    p.add_argument("--amp", choices=["bf16", "fp16", "fp32"], default=None,
                   help="mixed precision (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--channels-last", action="store_true", help="NHWC weights and inputs")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile (CUDA only), optionally with a mode, e.g. max-autotune")
    p.add_argument("--cuda-graphs", action="store_true", help="replay one captured CUDA graph per batch size")
    p.add_argument("--train", action="store_true", help="time forward+backward+AdamW instead of inference")
    p.add_argument("--data", metavar="CACHE", help="also time training from this cache (implies --train)")
    p.add_argument("--task", default="rsna", help="task for --data (rsna, presence, ...)")
    p.add_argument("--workers", type=int, default=None, help="loader workers for --data (default: from CPUs)")
    p.add_argument("--num-classes", type=int, default=6, help="outputs of the model's head")
    p.add_argument("--series-slices", type=int, default=32, help="slices per series for series-level models")
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations")
    p.add_argument("--iters", type=int, default=50, help="timed iterations (median reported)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--json", metavar="OUT", help="write the result to this JSON file")


def _run_bench(args: argparse.Namespace) -> int:
    from headct.bench import bench_command

    return bench_command(args)


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo", help="output directory")
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke test in about a minute")


def _run_demo(args: argparse.Namespace) -> int:
    from headct.demo import demo_command

    return demo_command(args)


def _add_models(p: argparse.ArgumentParser) -> None:
    """``headct models`` takes no options (the global ``-v`` still applies)."""
    del p  # no options: the table is the whole answer


def _run_models(args: argparse.Namespace) -> int:
    from headct.models.registry import describe_models

    rows = describe_models()  # reads the registry; builds no model
    width = max(len(name) for name in rows)
    print(f"{'model':<{width}}  input          description")
    for name, info in rows.items():
        print(f"{name:<{width}}  {info['input']:<13}  {info['description']}")
    print("parameters and GFLOPs of each: docs/model_table.md")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "phantom": ("synthetic head CT with known lesions", _add_phantom, _run_phantom),
    "prepare": ("read a dataset once into a memory-mapped cache with a split", _add_prepare, _run_prepare),
    "train": ("train a model on a cache", _add_train, _run_train),
    "cv": ("k-fold cross-validation over the cache's patient folds", _add_cv, _run_cv),
    "evaluate": ("metrics, predictions and a report for a checkpoint", _add_evaluate, _run_evaluate),
    "compare": ("paired tests between two evaluations", _add_compare, _run_compare),
    "calibrate": ("refit temperature and thresholds on a site's labelled studies", _add_calibrate,
                  _run_calibrate),
    "explain": ("Grad-CAM maps, scored against lesion masks", _add_explain, _run_explain),
    "predict": ("predict studies with a checkpoint", _add_predict, _run_predict),
    "serve": ("HTTP prediction service", _add_serve, _run_serve),
    "listen": ("DICOM node: CT studies in by C-STORE, SR and captures out", _add_listen, _run_listen),
    "export": ("export a checkpoint to ONNX", _add_export, _run_export),
    "bench": ("throughput, latency and memory of a model", _add_bench, _run_bench),
    "demo": ("phantom → prepare → train → evaluate → report, on this machine", _add_demo, _run_demo),
    "models": ("the registered models and what each reads, as a table", _add_models, _run_models),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headct", description=__doc__.splitlines()[0],
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"headct {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output: -v for progress (INFO), -vv for debugging and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add, _) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)
        command.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, dest="command_verbose",
                             help="as headct -v: -v for INFO, -vv for DEBUG and tracebacks")
        add(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    verbosity = args.verbose + getattr(args, "command_verbose", 0)
    logging.basicConfig(level=log_level(verbosity), format="%(levelname)s %(name)s: %(message)s")
    run = COMMANDS[args.command][2]
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():  # log lines go above the bars, never into them
            return int(run(args) or 0)
    except KeyboardInterrupt:
        print(f"headct {args.command}: interrupted", file=sys.stderr)
        return 130
    except (HeadCTError, OSError, ValueError, ImportError) as err:
        if isinstance(err, ImportError) and not isinstance(err, HeadCTError):
            err = missing_extra(err) or err
            if not isinstance(err, HeadCTError):
                raise  # a broken installation, not a user's mistake: the traceback helps
        print(f"headct {args.command}: {one_line(err)}", file=sys.stderr)
        hint = hint_for(err, args)
        if hint:
            print(f"  hint: {hint}", file=sys.stderr)
        if verbosity >= 2:
            traceback.print_exc()
        return 1


def log_level(verbosity: int) -> int:
    """WARNING by default, INFO with -v, DEBUG with -vv."""
    return logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG


def one_line(err: BaseException) -> str:
    """The error's text on one line (pydicom and friends put newlines in theirs)."""
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    return text or type(err).__name__


def hint_for(err: BaseException, args: argparse.Namespace) -> str | None:
    """What the user probably meant or should do next, for the usual first-hour mistakes."""
    if getattr(err, "hint", None):
        return str(err.hint)
    if isinstance(err, CheckpointError | InputError):
        for name in ("checkpoint", "model", "resume"):
            given = getattr(args, name, None)
            if not isinstance(given, str):
                continue
            folder = Path(given)
            if (folder / "best" / "config.json").is_file():
                return f"{folder} is a training run; did you mean {folder / 'best'}?"
            if name != "resume" and not folder.exists() and args.command not in ("train", "bench"):
                return "a checkpoint is the folder 'headct train' prints at its end (RUN/best)"
        data = getattr(args, "data", None)
        if isinstance(data, str) and not (Path(data) / "meta.json").is_file() and "meta.json" in str(err):
            return "--data is a cache folder: make one with headct prepare INPUT --format FORMAT --out CACHE"
    if isinstance(err, FileNotFoundError):
        return "check the path (relative paths start from the current folder)"
    return None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it is None, False or already in its help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        if isinstance(action, argparse._CountAction | argparse._VersionAction | argparse._HelpAction):
            return text
        return f"{text} (default: %(default)s)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
