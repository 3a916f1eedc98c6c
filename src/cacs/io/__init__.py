"""Readers and writers for the on-disk formats (DICOM, plist XML, score sheet, NIfTI, CSV)."""
