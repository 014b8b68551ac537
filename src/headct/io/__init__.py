"""Readers that turn DICOM, PNG/JPG and NIfTI into :class:`Volume` objects."""

from headct.io.dicom import read_dicom
from headct.io.nifti import read_nifti
from headct.io.png import read_image
from headct.io.volume import SeriesHeader, Volume

__all__ = ["SeriesHeader", "Volume", "read_dicom", "read_image", "read_nifti"]
