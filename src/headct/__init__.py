"""headct: stroke and intracranial-hemorrhage classification on head CT.

DICOM, PNG or NIfTI in; calibrated per-slice and per-study probabilities, and
Grad-CAM maps that show where the model looked, out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from headct.predict import Predictor

__all__ = ["__version__", "load", "models"]


def load(checkpoint_dir: str, **kwargs: Any) -> Predictor:
    """Load a checkpoint directory into a ready :class:`headct.predict.Predictor`."""
    from headct.predict import Predictor

    return Predictor.from_checkpoint(checkpoint_dir, **kwargs)


def __getattr__(name: str) -> Any:
    # `headct.models` without importing torch at `import headct` time.
    if name == "models":
        import importlib

        return importlib.import_module("headct.models")
    raise AttributeError(f"module 'headct' has no attribute {name!r}")
