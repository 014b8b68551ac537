"""Synthetic head CT with known lesions: the embedded default dataset.

``generate_study`` renders one study (HU, lesion masks, tissue labels);
``write_phantom`` writes a whole dataset in the RSNA (DICOM + labels.csv) or
TEKNOFEST (PNG class folders) layout with masks beside it; ``render_preview``
draws a montage. ``headct phantom`` is :func:`phantom_command`.
"""

from headct.labels import HEMORRHAGE_TYPES, LESION_BITS, RSNA_LABELS
from headct.phantom.anatomy import TISSUE_GROUPS, TISSUES
from headct.phantom.command import phantom_command
from headct.phantom.dataset import PHANTOM_VERSION, PhantomConfig, plan_studies, write_phantom
from headct.phantom.generator import PhantomStudy, default_slices, generate_study
from headct.phantom.preview import render_preview
from headct.phantom.writers import RESCALES

__all__ = [
    "HEMORRHAGE_TYPES",
    "LESION_BITS",
    "PHANTOM_VERSION",
    "RESCALES",
    "RSNA_LABELS",
    "TISSUES",
    "TISSUE_GROUPS",
    "PhantomConfig",
    "PhantomStudy",
    "default_slices",
    "generate_study",
    "phantom_command",
    "plan_studies",
    "render_preview",
    "write_phantom",
]
