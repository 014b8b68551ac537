"""headct: stroke and intracranial-hemorrhage classification on head CT.

DICOM, PNG or NIfTI in; calibrated per-slice and per-study probabilities, and
Grad-CAM maps that show where the model looked, out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from headct.predict import Predictor

__all__ = ["__version__", "load"]


def load(checkpoint_dir: str, **kwargs: Any) -> Predictor:
    """Load a checkpoint directory into a ready :class:`headct.predict.Predictor`."""
    # Deferred: the package root is imported before every module of every stage (``import headct.io``
    # runs this file first), so importing the last stage here would load torch and all of headct.
    from headct.predict import Predictor

    return Predictor.from_checkpoint(checkpoint_dir, **kwargs)
