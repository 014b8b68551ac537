"""Readers that turn DICOM, PNG/JPG and NIfTI into :class:`Volume` objects."""

from headct.io.volume import SeriesHeader, Volume

__all__ = ["SeriesHeader", "Volume", "read_dicom", "read_image", "read_nifti"]


def __getattr__(name: str):
    # Readers import pydicom / PIL / nibabel lazily.
    if name == "read_dicom":
        from headct.io.dicom import read_dicom

        return read_dicom
    if name == "read_image":
        from headct.io.png import read_image

        return read_image
    if name == "read_nifti":
        from headct.io.nifti import read_nifti

        return read_nifti
    raise AttributeError(f"module 'headct.io' has no attribute {name!r}")
