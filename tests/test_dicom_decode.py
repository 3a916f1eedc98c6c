"""Every common CT transfer syntax reads to the HU of the uncompressed series; bad files are named with their cause.

The compressed series are made here (pydicom's RLE, JPEG-LS and JPEG 2000
encoders; GDCM, a dev dependency, for JPEG Lossless and Baseline): nothing is
downloaded.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.encaps import encapsulate, generate_frames

from cacs.infer import InputError, read_dicom_scan
from cacs.io.decode import CT_TRANSFER_SYNTAXES, check_transfer_syntax
from cacs.io.dicom_series import read_slice
from tests.test_dicom_study import encode, phantom_hu, write_series

LOSSLESS = {
    "rle": uid.RLELossless,
    "jpeg-ls": uid.JPEGLSLossless,
    "jpeg2000": uid.JPEG2000Lossless,
    "jpeg-lossless-sv1": uid.JPEGLosslessSV1,
    "jpeg-lossless-p14": uid.JPEGLossless,
    "deflate": uid.DeflatedExplicitVRLittleEndian,
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    hu = phantom_hu(nz=5, seed=3)
    folder = tmp_path_factory.mktemp("plain")
    write_series(folder, hu)
    return hu, read_dicom_scan(folder).volume


@pytest.mark.parametrize("signed", [False, True], ids=["uint16", "int16"])
@pytest.mark.parametrize("name", sorted(LOSSLESS))
def test_compressed_series_reads_to_the_same_hu(reference, tmp_path, name, signed):
    hu, plain = reference
    files = write_series(tmp_path / name, hu, syntax=LOSSLESS[name], signed=signed)
    assert str(pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID) == LOSSLESS[name]
    volume = read_dicom_scan(tmp_path / name).volume
    assert np.array_equal(volume.hu, plain.hu) and volume.geometry == plain.geometry


@pytest.mark.parametrize("name", ["rle", "jpeg-ls", "jpeg2000", "jpeg-lossless-sv1", "jpeg-lossless-p14"])
def test_the_pinned_runtime_plugins_decode_without_gdcm(reference, tmp_path, name):
    """GDCM is only a test encoder: pylibjpeg (or pydicom's own RLE decoder) must decode every syntax alone."""
    hu, _ = reference
    path = write_series(tmp_path, hu[:2], syntax=LOSSLESS[name])[0]
    ds = pydicom.dcmread(path)
    stored = pydicom.pixels.pixel_array(ds, decoding_plugin="pylibjpeg")
    assert np.array_equal(stored.astype(np.int32) - 1024, hu[0])


def test_jpeg_baseline_8bit_decodes(tmp_path):
    """Lossy 8-bit JPEG (no CT stores HU this way, but secondary captures do): decodes through pylibjpeg."""
    hu = phantom_hu(nz=3)
    grey = np.clip((hu.astype(np.int32) + 1000) // 8, 0, 255)  # 8 HU per grey level
    files = write_series(tmp_path / "s", hu, bits_stored=8)
    for k, path in enumerate(files):  # 8-bit storage, what the baseline encoder takes
        ds = pydicom.dcmread(path)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = grey[k].astype(np.uint8).tobytes()
        ds.save_as(path, enforce_file_format=True)
    encode(files[0], uid.JPEGBaseline8Bit)
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == uid.JPEGBaseline8Bit
    decoded = pydicom.pixels.pixel_array(ds, decoding_plugin="pylibjpeg")
    assert decoded.shape == grey[0].shape and np.abs(decoded.astype(int) - grey[0]).max() <= 8


def test_every_listed_syntax_has_a_decoder():
    for syntax in CT_TRANSFER_SYNTAXES:
        ds = pydicom.Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        check_transfer_syntax(ds)  # raises when a plugin is missing


@pytest.mark.parametrize(
    ("syntax", "words"),
    [("1.2.840.10008.1.2.4.100", r"MPEG2 Main Profile / Main Level \(1.2.840.10008.1.2.4.100\)"),
     ("1.2.3.4.5.6", r"unknown syntax \(1.2.3.4.5.6\)")],
)  # fmt: skip
def test_unsupported_syntax_is_named(tmp_path, syntax, words):
    files = write_series(tmp_path / "s", phantom_hu(nz=3), syntax=uid.RLELossless)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path)
    with pytest.raises(ValueError, match="unsupported transfer syntax " + words):
        read_slice(files[0])
    with pytest.raises(InputError, match=f"no readable CT DICOM file among 3 file.*unsupported .* {words}"):
        read_dicom_scan(tmp_path / "s")


@pytest.mark.parametrize("syntax", [None, uid.JPEGLSLossless, uid.DeflatedExplicitVRLittleEndian],
                         ids=["uncompressed", "jpeg-ls", "deflate"])  # fmt: skip
def test_truncated_slice_is_named_as_truncated_not_as_a_gap(tmp_path, syntax):
    files = write_series(tmp_path / "s", phantom_hu(nz=5), syntax=syntax)
    victim = files[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 700])
    with pytest.raises(InputError) as info:
        read_dicom_scan(tmp_path / "s")
    assert info.value.file == str(victim)
    assert "truncated" in info.value.problem and "gap" in info.value.problem
    assert str(info.value).startswith(f"{victim}: truncated")


def test_corrupt_compressed_stream_names_file_and_syntax(tmp_path):
    files = write_series(tmp_path / "s", phantom_hu(nz=4), syntax=uid.JPEG2000Lossless)
    ds = pydicom.dcmread(files[1])
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])  # the file complete, its JPEG 2000 stream cut
    ds.save_as(files[1])
    with pytest.raises(InputError, match=r"cannot decode pixel data \(JPEG 2000 Lossless \(1.2.840.10008.1.2.4.90\)\)"
                                         r": corrupt or truncated image data") as info:  # fmt: skip
        read_dicom_scan(tmp_path / "s")
    assert info.value.file == str(files[1])


def test_missing_tag_is_named(tmp_path):
    files = write_series(tmp_path / "s", phantom_hu(nz=3))
    for path in files:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    with pytest.raises(InputError, match=r"IM02-0001.dcm: DICOM file lacks ImagePositionPatient \(missing tag\)"):
        read_dicom_scan(tmp_path / "s")


def test_ingest_reads_a_compressed_coca_series(coca_copy, tiny_ingested, tmp_path):
    """The pipeline's ingest (not only `cacs infer`) decodes compressed COCA exports to the same volume."""
    from cacs.ingest import IngestOptions, run_ingest
    from cacs.io.nifti import read_volume
    from tests.test_dicom_study import encode

    patient = coca_copy / "deidentified_nongated"
    pid = sorted(p.name for p in patient.iterdir() if p.is_dir())[0]
    for path in sorted((patient / pid).rglob("*.dcm")):
        encode(path, uid.JPEGLSLossless)
    run_ingest("nongated", coca_copy, tmp_path / "n", tmp_path / "n.csv", tmp_path / "qc.csv",
               IngestOptions(paired_ids=True))  # fmt: skip
    ours = read_volume(tmp_path / "n" / f"nongated-{pid}.nii.gz")[0]
    table = tiny_ingested.tables["nongated"].set_index("source_id")
    assert np.array_equal(ours, read_volume(table.loc[pid, "image"])[0])
