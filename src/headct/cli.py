"""The ``headct`` command: one sub-command per job, each ending with where its outputs are.

Each sub-command has a ``_add_<name>`` function that declares its arguments and
a ``_run_<name>`` function that imports the module doing the work (lazily, so
``headct --help`` stays fast) and returns an exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from headct import __version__

log = logging.getLogger("headct")


# --- phantom ---------------------------------------------------------------

def _add_phantom(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="output directory")
    p.add_argument("--studies", type=int, default=20, help="number of studies")
    p.add_argument("--layout", choices=["rsna", "png-folders"], default="rsna")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", type=float, default=1.0, help="0 easy .. 2 hard")
    p.add_argument("--size", type=int, default=512, help="slice size in pixels")
    p.add_argument("--slices", type=int, default=None, help="slices per study (default: from the size)")
    p.add_argument("--preview", metavar="PNG", help="write a montage of slices x lesion types to PNG")


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
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--fractions", default="0.8,0.1,0.1", help="train,val,test fractions")
    p.add_argument("--folds", type=int, default=0, help="also assign k folds (0: none)")
    p.add_argument("--class-map", default=None,
                   help="png-folders: folder=class pairs, e.g. 'normal=non-stroke,bleed=hemorrhagic'")
    p.add_argument("--path-column", default=None, help="csv: image path column (default: path, image, file, ...)")
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

    p.add_argument("--config", help="YAML file with TrainConfig fields (flags given here win)")
    p.add_argument("--resume", metavar="RUN", help="continue a stopped run from RUN/train_state.pt")
    helps = {"data": "cache directory made by `headct prepare`", "model": "model name (see `headct models`)",
             "task": "rsna | presence | subtype | 3class | label,label,...", "out": "run directory"}
    for f in config_fields():
        # Every TrainConfig field is a flag; the default is "not given" so YAML values survive.
        kind = getattr(f.type, "__name__", str(f.type))
        extra = {"nargs": "?", "const": "true"} if kind == "bool" else {}
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=argparse.SUPPRESS,
                       metavar=f.name.upper(), help=helps.get(f.name, f"TrainConfig.{f.name} ({f.type})"), **extra)


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
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None)


def _run_evaluate(args: argparse.Namespace) -> int:
    from headct.evaluate import evaluate_command

    return evaluate_command(args)


def _add_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("eval_a")
    p.add_argument("eval_b")
    p.add_argument("--json", help="also write the tests to this JSON file")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)


def _run_compare(args: argparse.Namespace) -> int:
    from headct.compare import compare_command

    return compare_command(args)


def _add_calibrate(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="cache of the site's labelled studies")
    p.add_argument("--split", choices=["val", "test", "all"], default="val", help="the studies to calibrate on")
    p.add_argument("--target-sensitivity", type=float, default=None, metavar="S",
                   help="per class, the most specific study-level threshold with sensitivity >= S "
                        "(default: F1-best thresholds)")
    p.add_argument("--out", required=True, help="the new checkpoint directory")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None)


def _run_calibrate(args: argparse.Namespace) -> int:
    from headct.recalibrate import calibrate_command

    return calibrate_command(args)


# --- explain / predict / serve / export ------------------------------------

def _add_explain(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--score", action="store_true", help="score maps against lesion masks")
    p.add_argument("--limit", type=int, default=64, help="slices to explain")
    p.add_argument("--layer", action="append", default=None, metavar="MODULE",
                   help="Grad-CAM target layer by module path (repeatable); default: the model's")
    p.add_argument("--tolerance", type=int, default=None,
                   help="pointing-game tolerance in pixels (default: 15 px at 224 px, scaled to the cache size)")


def _run_explain(args: argparse.Namespace) -> int:
    from headct.explain import explain_command

    return explain_command(args)


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="DICOM file/series/study/folder of studies, PNG or NIfTI")
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--out", required=True)
    p.add_argument("--overlays", action="store_true")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    p.add_argument("--device", default=None)


def _run_predict(args: argparse.Namespace) -> int:
    from headct.predict import predict_command

    return predict_command(args)


def _add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    p.add_argument("--max-upload-mb", type=float, default=512, help="largest request body (413 above)")
    p.add_argument("--max-files", type=int, default=2000, help="most files per upload or zip (413 above)")


def _run_serve(args: argparse.Namespace) -> int:
    from headct.serve import serve_command

    return serve_command(args)


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint")
    p.add_argument("--onnx", required=True, metavar="FILE")


def _run_export(args: argparse.Namespace) -> int:
    from headct.export import export_command

    return export_command(args)


# --- bench / demo / models -------------------------------------------------

def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model name (see `headct models`)")
    p.add_argument("--batch-size", type=int, default=256)
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
    p.add_argument("--num-classes", type=int, default=6)
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
    p.add_argument("--verbose", action="store_true")


def _run_models(args: argparse.Namespace) -> int:
    from headct.models import list_models

    for name in list_models():
        print(name)
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
    "export": ("export a checkpoint to ONNX", _add_export, _run_export),
    "bench": ("throughput, latency and memory of a model", _add_bench, _run_bench),
    "demo": ("phantom → prepare → train → evaluate → report, on this machine", _add_demo, _run_demo),
    "models": ("list the registered models", _add_models, _run_models),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headct", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"headct {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add, _) in COMMANDS.items():
        add(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    run = COMMANDS[args.command][2]
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
