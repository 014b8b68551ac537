"""Keys that let us group by patient without keeping who the patient is."""

from __future__ import annotations

import hashlib
import os

DEFAULT_SALT = "headct-v1"
"""Used when HEADCT_SALT is unset. Set HEADCT_SALT per site so keys cannot be
recomputed from a known PatientID by someone outside it."""


def patient_key(patient_id: str | None, salt: str | None = None) -> str | None:
    """Salted SHA-256 of a PatientID, 16 hex characters; None for a missing id."""
    if patient_id is None or str(patient_id).strip() == "":
        return None
    salt = salt if salt is not None else os.environ.get("HEADCT_SALT", DEFAULT_SALT)
    digest = hashlib.sha256(f"{salt}\x00{str(patient_id).strip()}".encode()).hexdigest()
    return digest[:16]


def short_hash(text: str) -> str:
    """Stable 16-hex name for something (a file path, a study) that has no UID."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
