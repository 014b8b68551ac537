"""What labels and lesion masks mean: the vocabulary the phantom writes and the later stages read.

A neutral module (it imports nothing of headct), so the phantom, the cache
builder, the tasks and Grad-CAM scoring share one definition:

- ``RSNA_LABELS``: the RSNA 2019 label names, in the order of the competition's CSV;
- ``LESION_BITS``: the bit of each lesion type in the uint8 masks (docs/internals.md);
- ``PHANTOM_MARKER``: the file the phantom writes at the root of its data set;
  ``headct prepare`` records its presence as ``synthetic: true`` in the cache's
  meta.json, and a model trained on it says so in every prediction.
"""

from __future__ import annotations

HEMORRHAGE_TYPES: tuple[str, ...] = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
"""The five RSNA subtypes, in the RSNA label order."""

RSNA_LABELS: tuple[str, ...] = (*HEMORRHAGE_TYPES, "any")
"""RSNA label names in the order of the competition's CSV."""

LESION_BITS: dict[str, int] = {
    "epidural": 1,
    "intraparenchymal": 2,
    "intraventricular": 4,
    "subarachnoid": 8,
    "subdural": 16,
    "ischemic": 32,
}
"""Bit of each lesion type in the uint8 masks."""

HEMORRHAGE_BITS = sum(LESION_BITS[name] for name in HEMORRHAGE_TYPES)

PHANTOM_MARKER = "phantom.json"
"""Written by ``headct phantom`` at the root of every synthetic data set."""
