"""``headct phantom``: write a phantom dataset and/or a preview montage, then say where."""

from __future__ import annotations

import argparse
import sys

from headct.phantom.dataset import PhantomConfig, write_phantom
from headct.phantom.preview import render_preview


def phantom_command(args: argparse.Namespace) -> int:
    """Run ``headct phantom`` from parsed arguments; returns the exit code."""
    if not args.out and not args.preview:
        print("headct phantom: give --out DIR (dataset) and/or --preview PNG (montage)", file=sys.stderr)
        return 2
    messages = []
    if args.out:
        try:
            config = PhantomConfig(out=args.out, studies=args.studies, layout=args.layout, seed=args.seed,
                                   difficulty=args.difficulty, size=args.size, slices=args.slices,
                                   tilt=getattr(args, "tilt", 0.0), workers=getattr(args, "workers", 1))
        except ValueError as err:
            print(f"headct phantom: {err}", file=sys.stderr)
            return 2
        summary = write_phantom(config)
        counts = summary["counts"]
        where = "dicom/, labels.csv" if config.layout == "rsna" else "non-stroke/, hemorrhagic/, ischemic/"
        messages.append(
            f"phantom: {counts['studies']} studies ({counts['patients']} patients, {counts['slices']} slices, "
            f"{config.layout}) in {config.out}: {where}, masks/, phantom.json"
        )
    if args.preview:
        render_preview(args.preview, seed=args.seed, size=min(args.size, 256), difficulty=args.difficulty)
        messages.append(f"preview: {args.preview}")
    print("; ".join(messages))
    return 0
