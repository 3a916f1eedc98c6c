"""Real-data acquisition without the network: fake azcopy, local archives, the synthetic tree.

What must hold: the shared-access URL never shows (logs, stdout/stderr,
files, errors, Snakemake's printed plan); expiry and a missing variable
are caught before azcopy runs; hostile archives are refused naming the
entry; checksums are enforced; a broken layout is reported by name; the
synthetic tree passes; the workflow plans the download rules and lints clean.
"""

from __future__ import annotations

import http.server
import io
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from cacs.acquire import AIMI_COCA_PAGE, AcquireError
from cacs.acquire.archive import UnsafeArchiveError, fetch_url, safe_extract, sha256_file
from cacs.acquire.coca import download_coca
from cacs.acquire.layout import Expect, verify_layout
from cacs.acquire.redact import check_not_expired, redact, sas_expiry
from cacs.acquire.segthor import download_segthor
from cacs.acquire.staging import COMPLETE_MARKER
from cacs.cli import main as cacs_main

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

ENV = "CACS_TEST_SAS_URL"
SIG = "SeCrEtSiGnAtUrE0123456789abcdefXYZ%2B%3D"
SIG_CORE = "SeCrEtSiGnAtUrE0123456789abcdefXYZ"  # what must never appear, in any encoding
SAS_URL = f"https://cocaacct.blob.core.windows.net/cocacontainer?sv=2021-08-06&se=2099-12-31T00:00:00Z&sp=rl&sig={SIG}"
EXPIRED_URL = SAS_URL.replace("se=2099-12-31T00:00:00Z", "se=2020-01-01T00:00:00Z")


# ----------------------------------------------------------- fake azcopy ----


def fake_azcopy(tmp_path: Path, body: str) -> Path:
    """An `azcopy` executable first on PATH: a Python script running ``body`` (args in ``argv``)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "azcopy"
    exe.write_text(f"#!{sys.executable}\nimport os, sys, shutil, pathlib\nargv = sys.argv[1:]\n{body}\n")
    exe.chmod(0o755)
    return exe


FAILING_403 = """
print("azcopy called with:", " ".join(argv))
url = argv[1]
pathlib.Path(os.environ["AZCOPY_LOG_LOCATION"], "job.log").write_text("GET " + url + "\\n")
pathlib.Path(os.environ["AZCOPY_JOB_PLAN_LOCATION"], "job.steV17").write_text(url)
print("RESPONSE 403: 403 Server failed to authenticate the request. URL: " + url, file=sys.stderr)
print("===== RESPONSE ERROR (ServiceCode=AuthenticationFailed) =====", file=sys.stderr)
print("Final Job Status: Failed")
sys.exit(1)
"""


def _copying_azcopy(source: Path) -> str:
    """A fake that 'downloads' ``source`` as azcopy would: into <dest>/<container>/, plus a stale partial."""
    return f"""
dest = pathlib.Path(argv[2]) / "cocacontainer"
shutil.copytree({str(source)!r}, dest, dirs_exist_ok=True)
(dest / "Gated_release_final" / ".azDownload-1234-stale.dcm").write_bytes(b"half")
print("Final Job Status: Completed")
"""


@pytest.fixture()
def on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "bin"


def _all_file_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------- COCA: SAS ----


def test_missing_variable_names_it_and_the_registration_page(tmp_path, on_path, monkeypatch):
    called = tmp_path / "azcopy-called"
    fake_azcopy(tmp_path, f"pathlib.Path({str(called)!r}).touch()")
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(AcquireError) as err:
        download_coca(tmp_path / "coca", ENV)
    message = str(err.value)
    assert ENV in message and AIMI_COCA_PAGE in message and "shared-access" in message
    assert not called.exists()


def test_expired_url_is_caught_before_azcopy_runs(tmp_path, on_path, monkeypatch):
    called = tmp_path / "azcopy-called"
    fake_azcopy(tmp_path, f"pathlib.Path({str(called)!r}).touch()")
    monkeypatch.setenv(ENV, EXPIRED_URL)
    with pytest.raises(AcquireError, match="expired on 2020-01-01") as err:
        download_coca(tmp_path / "coca", ENV)
    assert SIG_CORE not in str(err.value)
    assert not called.exists()


def test_sas_expiry_parsing():
    assert sas_expiry(SAS_URL) == datetime(2099, 12, 31, tzinfo=UTC)
    assert sas_expiry("https://a.b/c?sv=1&sig=x") is None
    assert check_not_expired(SAS_URL, ENV, now=datetime(2030, 1, 1, tzinfo=UTC)) is not None
    with pytest.raises(AcquireError):
        check_not_expired(SAS_URL, ENV, now=datetime(2100, 1, 1, tzinfo=UTC))


def test_url_without_signature_is_rejected_without_echoing_it(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "https://cocaacct.blob.core.windows.net/c?sv=1&token=abcdefsecret")
    with pytest.raises(AcquireError, match="sig=") as err:
        download_coca(tmp_path / "coca", ENV)
    assert "abcdefsecret" not in str(err.value)


def test_missing_azcopy_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, SAS_URL)
    with pytest.raises(AcquireError, match="Install AzCopy") as err:
        download_coca(tmp_path / "coca", ENV, azcopy="azcopy-that-does-not-exist")
    assert SIG_CORE not in str(err.value)


def test_redact_removes_signature_in_every_form():
    text = f"x {SAS_URL} y sig=abc%2Bdef z https://h/p?a=1&b=2 w {SIG.replace('%2B', '+').replace('%3D', '=')}"
    clean = redact(text, [SAS_URL])
    assert SIG_CORE not in clean and "abc%2Bdef" not in clean and "a=1" not in clean
    assert "https://cocaacct.blob.core.windows.net/cocacontainer" in clean


def test_secret_never_appears_when_azcopy_fails(tmp_path, on_path, monkeypatch, caplog, capsys):
    """Fake azcopy echoes the URL, answers 403 with it, and writes it to its log and plan files."""
    fake_azcopy(tmp_path, FAILING_403)
    monkeypatch.setenv(ENV, SAS_URL)
    caplog.set_level(logging.DEBUG)
    dest = tmp_path / "data" / "coca"
    stamp = tmp_path / "results" / "download_coca.json"
    with pytest.raises(AcquireError) as err:
        download_coca(dest, ENV, stamp)
    message = str(err.value)
    assert "probably expired" in message
    assert "azcopy called with" in caplog.text  # the output was relayed ...
    code = cacs_main(["download-coca", "--dest", str(dest), "--sas-env", ENV, "--stamp", str(stamp)])
    assert code == 2  # ... and the CLI turns the failure into one line
    out, errtext = capsys.readouterr()
    everything = "\n".join([message, caplog.text, out, errtext, _all_file_text(tmp_path / "data")])
    assert SIG_CORE not in everything  # ... but never the signature
    assert "cocaacct.blob.core.windows.net" in caplog.text
    assert not stamp.exists() and not dest.exists()
    staging = tmp_path / "data" / ".coca.cacs-download"
    assert staging.is_dir() and not (staging / "azcopy-plans").exists()  # kept to resume; plans deleted
    assert stat.S_IMODE(staging.stat().st_mode) == 0o700


def test_download_completes_resumes_nothing_and_needs_no_secret_twice(tmp_path, on_path, monkeypatch, tiny_cohort):
    fake_azcopy(tmp_path, _copying_azcopy(tiny_cohort.coca))
    monkeypatch.setenv(ENV, SAS_URL)
    dest, stamp = tmp_path / "data" / "coca", tmp_path / "results" / "download_coca.json"
    record = download_coca(dest, ENV, stamp)
    assert (dest / "Gated_release_final" / "patient").is_dir() and (dest / COMPLETE_MARKER).is_file()
    assert not list(dest.rglob(".azDownload-*"))  # stale partial removed
    assert not (tmp_path / "data" / ".coca.cacs-download").exists()
    saved = json.loads(stamp.read_text())
    assert saved["files"] == record["files"] > 0
    assert saved["source"] == "https://cocaacct.blob.core.windows.net/cocacontainer"
    assert SIG_CORE not in _all_file_text(tmp_path / "data") + stamp.read_text()
    verify_layout(dest, tiny_cohort.segthor)  # the downloaded tree is what ingest expects
    monkeypatch.delenv(ENV)
    stamp.unlink()
    again = download_coca(dest, ENV, stamp)  # complete: no variable, no azcopy needed
    assert again["status"] == "already complete" and stamp.is_file()


def test_existing_foreign_folder_is_never_overwritten(tmp_path, monkeypatch):
    dest = tmp_path / "coca"
    (dest / "mine.txt").parent.mkdir()
    (dest / "mine.txt").write_text("keep")
    monkeypatch.setenv(ENV, SAS_URL)
    with pytest.raises(AcquireError, match="data.source: local"):
        download_coca(dest, ENV)
    assert (dest / "mine.txt").read_text() == "keep"


# -------------------------------------------------------------- archives ----


def _zip(path: Path, entries: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def _tar(path: Path, entries: dict[str, bytes], special: tarfile.TarInfo | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if special is not None:
            tf.addfile(special)
    return path


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


OK = {"train/Patient_01/GT.nii.gz": b"x"}


@pytest.mark.parametrize(
    ("maker", "bad_entry", "why"),
    [
        (lambda p: _zip(p / "a.zip", {**OK, "../evil.txt": b"pwned"}), "../evil.txt", "escapes"),
        (lambda p: _tar(p / "a.tgz", {**OK, "../evil.txt": b"pwned"}), "../evil.txt", "escapes"),
        (lambda p: _zip(p / "a.zip", {**OK, "train/../../evil.txt": b"pwned"}), "train/../../evil.txt", "escapes"),
        (lambda p: _zip(p / "a.zip", {**OK, "/tmp/evil-abs.txt": b"pwned"}), "/tmp/evil-abs.txt", "absolute"),
        (lambda p: _tar(p / "a.tgz", {**OK, "/tmp/evil-abs.txt": b"pwned"}), "/tmp/evil-abs.txt", "absolute"),
        (lambda p: _zip(p / "a.zip", OK, symlink="train/link"), "train/link", "symlink"),
        (lambda p: _tar(p / "a.tgz", OK, _special("train/link", tarfile.SYMTYPE, "/etc")), "train/link", "symlink"),
        (lambda p: _tar(p / "a.tgz", OK, _special("train/hard", tarfile.LNKTYPE, "/etc/passwd")), "train/hard",
         "hard link"),
        (lambda p: _tar(p / "a.tgz", OK, _special("train/dev", tarfile.CHRTYPE)), "train/dev", "device"),
        (lambda p: _tar(p / "a.tgz", OK, _special("train/fifo", tarfile.FIFOTYPE)), "train/fifo", "device"),
    ],
)  # fmt: skip
def test_unsafe_archive_entries_are_refused_by_name(tmp_path, maker, bad_entry, why):
    archive = maker(tmp_path)
    out = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(archive, out)
    assert repr(bad_entry) in str(err.value) and why in str(err.value)
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/evil-abs.txt").exists()


def test_refused_archive_leaves_no_segthor_root(tmp_path):
    archive = _tar(tmp_path / "bad.tar.gz", {**OK, "../evil.txt": b"pwned"})
    with pytest.raises(UnsafeArchiveError, match="evil.txt"):
        download_segthor([str(archive)], tmp_path / "segthor")
    assert not (tmp_path / "segthor").exists()


def _segthor_zip(tiny_cohort, path: Path) -> Path:
    """The tiny SegTHOR tree zipped as a user would get it: wrapped in a top folder."""
    with zipfile.ZipFile(path, "w") as zf:
        for p in sorted(tiny_cohort.segthor.rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                zf.write(p, "SegTHOR/" + str(p.relative_to(tiny_cohort.segthor)))
    return path


def test_checksum_wrong_rejected_right_accepted(tmp_path, tiny_cohort):
    archive = _segthor_zip(tiny_cohort, tmp_path / "segthor.zip")
    dest, stamp = tmp_path / "data" / "segthor", tmp_path / "stamp.json"
    with pytest.raises(AcquireError, match="SHA-256 is"):
        download_segthor([str(archive)], dest, stamp, sha256=["0" * 64])
    assert not dest.exists() and not stamp.exists()
    record = download_segthor([str(archive)], dest, stamp, sha256=[sha256_file(archive)])
    assert (dest / "train").is_dir() and (dest / "test").is_dir() and (dest / COMPLETE_MARKER).is_file()
    assert record["sha256_checked"] == [True] and json.loads(stamp.read_text())["files"] == record["files"]
    verify_layout(tiny_cohort.coca, dest)


def test_segthor_from_tar_in_two_archives(tmp_path, tiny_cohort):
    """Train and test shipped separately, as tar.gz: extracted into one tree."""
    parts = {}
    for split in ("train", "test"):
        path = tmp_path / f"{split}.tar.gz"
        with tarfile.open(path, "w:gz") as tf:
            tf.add(tiny_cohort.segthor / split, arcname=split)
        parts[split] = path
    dest = tmp_path / "segthor"
    download_segthor([str(parts["train"]), str(parts["test"])], dest)
    report = verify_layout(tiny_cohort.coca, dest)
    assert report.counts["segthor_train"] == 4 and report.counts["segthor_test"] == 1


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = bytes(range(256)) * 400

    def do_GET(self):  # noqa: N802 (http.server's naming)
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            self.send_response(206)
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_fetch_resumes_a_partial_file_over_http(tmp_path):
    """Loopback only: a .part file is continued with a Range request, then renamed."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dest = tmp_path / "segthor.zip"
        (tmp_path / "segthor.zip.part").write_bytes(_RangeHandler.payload[:1000])
        fetch_url(f"http://127.0.0.1:{server.server_port}/segthor.zip?token=abc", dest)
    finally:
        server.shutdown()
    assert dest.read_bytes() == _RangeHandler.payload and not (tmp_path / "segthor.zip.part").exists()


# ---------------------------------------------------------------- layout ----


def test_synthetic_tree_passes_with_relaxed_counts(tiny_cohort, tmp_path):
    report_path = tmp_path / "layout.json"
    report = verify_layout(tiny_cohort.coca, tiny_cohort.segthor, report_path=report_path)
    saved = json.loads(report_path.read_text())
    assert report.ok and saved["ok"] and saved["errors"] == []
    assert saved["counts"]["gated"] == saved["counts"]["nongated"] == 8
    assert saved["checked"]["dicom_headers"] >= 16 and saved["checked"]["nifti_headers"] >= 9
    # the generator's traps are COCA's real quirks: reported, not fatal
    assert any("annotation file without images" in w["problem"] for w in saved["warnings"])
    assert verify_layout(tiny_cohort.coca, tiny_cohort.segthor, Expect(gated=8, nongated=8, segthor_train=4)).ok


@pytest.fixture()
def segthor_copy(tiny_cohort, tmp_path) -> Path:
    dest = tmp_path / "segthor"
    shutil.copytree(tiny_cohort.segthor, dest)
    return dest


def _errors(coca: Path, segthor: Path, expect: Expect | None = None) -> str:
    with pytest.raises(AcquireError) as err:
        verify_layout(coca, segthor, expect)
    return str(err.value)


def test_missing_patient_folder_named_when_counts_are_configured(coca_copy, tiny_cohort):
    shutil.rmtree(coca_copy / "deidentified_nongated" / "3")
    message = _errors(coca_copy, tiny_cohort.segthor, Expect(nongated=8))
    assert "deidentified_nongated: 7 found, expected at least 8 (download.expect.nongated)" in message
    assert "likely missing: " in message and "deidentified_nongated/3" in message


def test_patient_folder_without_dicom_named(coca_copy, tiny_cohort):
    folder = coca_copy / "Gated_release_final" / "patient" / "5"
    shutil.rmtree(folder)
    folder.mkdir()
    assert "Gated_release_final/patient/5: no DICOM files" in _errors(coca_copy, tiny_cohort.segthor)


def test_unreadable_and_empty_dicom_named(coca_copy, tiny_cohort):
    first = sorted((coca_copy / "deidentified_nongated" / "2").glob("*/*.dcm"))[0]
    first.write_bytes(b"not a dicom file at all" * 10)
    empty = sorted((coca_copy / "Gated_release_final" / "patient" / "0").glob("*/*.dcm"))[-1]
    empty.write_bytes(b"")
    message = _errors(coca_copy, tiny_cohort.segthor)
    assert f"{first.relative_to(coca_copy)}: unreadable DICOM header" in message
    assert f"{empty.relative_to(coca_copy)}: empty file (0 bytes)" in message


def test_missing_and_broken_xml_named(coca_copy, tiny_cohort):
    xml_dir = coca_copy / "Gated_release_final" / "calcium_xml"
    n_xml = len(list(xml_dir.glob("*.xml")))
    victim = sorted(xml_dir.glob("*.xml"))[0]
    victim.unlink()
    message = _errors(coca_copy, tiny_cohort.segthor, Expect(gated_xml=n_xml))
    assert f"Gated_release_final/calcium_xml: {n_xml - 1} found, expected at least {n_xml}" in message
    broken = sorted(xml_dir.glob("*.xml"))[0]
    broken.write_text("<plist><dict><key>Images")
    assert f"Gated_release_final/calcium_xml/{broken.name}: not a readable property list" in _errors(
        coca_copy, tiny_cohort.segthor
    )
    shutil.rmtree(xml_dir)
    assert "Gated_release_final/calcium_xml: folder missing" in _errors(coca_copy, tiny_cohort.segthor)


def test_missing_score_sheet_and_partial_download_named(coca_copy, tiny_cohort):
    (coca_copy / "deidentified_nongated" / "scores.xlsx").unlink()
    series = next((coca_copy / "Gated_release_final" / "patient" / "1").iterdir())
    (series / ".azDownload-42-IM-0001-0001.dcm").write_bytes(b"half")
    message = _errors(coca_copy, tiny_cohort.segthor)
    assert "deidentified_nongated/scores.xlsx: score sheet missing" in message
    assert ".azDownload-42-IM-0001-0001.dcm: partial azcopy download" in message


def test_segthor_missing_gt_and_broken_nifti_named(tiny_cohort, segthor_copy):
    case = sorted((segthor_copy / "train").iterdir())[0]
    next(p for p in case.iterdir() if p.name.lower().startswith("gt")).unlink()
    other = sorted((segthor_copy / "train").iterdir())[1]
    (other / f"{other.name}.nii.gz").write_bytes(b"\x1f\x8b garbage")
    message = _errors(tiny_cohort.coca, segthor_copy, Expect(segthor_train=5))
    assert f"train/{case.name}: no GT.nii.gz" in message
    assert f"train/{other.name}/{other.name}.nii.gz: unreadable image header" in message
    assert "train: 4 found, expected at least 5 (download.expect.segthor_train)" in message


def test_wrong_roots_named_and_warn_mode_goes_on(tmp_path):
    message = _errors(tmp_path / "nope-coca", tmp_path / "nope-segthor")
    assert "nope-coca: COCA root folder not found (data.coca_root)" in message
    assert "nope-segthor: SegTHOR root folder not found" in message
    code = cacs_main(["verify-layout", "--coca-root", str(tmp_path / "x"), "--segthor-root", str(tmp_path / "y"),
                      "--report", str(tmp_path / "r.txt"), "--warn-only"])  # fmt: skip
    assert code == 0 and "FAILED" in (tmp_path / "r.txt").read_text()


# -------------------------------------------------------------- workflow ----


def _snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [str(SNAKEMAKE), "-s", str(SNAKEFILE), "--directory", str(workdir), *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300, env=env)


def _download_overlay(tmp_path: Path) -> Path:
    overlay = tmp_path / "fake-paths.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "data": {"coca_root": str(tmp_path / "fake" / "coca"), "segthor_root": str(tmp_path / "fake" / "st")},
                "download": {"segthor_archive": ["https://example.invalid/segthor/train.zip", "/nowhere/test.zip"]},
            }
        )
    )
    return overlay


def test_download_dry_run_plans_the_rules_without_the_secret(tmp_path):
    env = {**os.environ, "COCA_SAS_URL": SAS_URL}
    configs = [str(ROOT / "config" / "coca.yaml"), str(ROOT / "config" / "coca-download.yaml")]
    result = _snakemake(tmp_path, "-n", "-p", "--configfile", *configs, str(_download_overlay(tmp_path)), env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for rule in ("rule download_coca:", "rule download_segthor:", "checkpoint verify_layout:", "rule ingest_gated:"):
        assert rule in output, rule
    assert "--sas-env COCA_SAS_URL" in output
    assert SIG_CORE not in output and "se=2099" not in output
    assert not (tmp_path / "fake").exists() and not (tmp_path / "results").exists()


def test_local_dry_run_on_fake_paths_plans_verify_then_ingest(tmp_path):
    overlay = tmp_path / "fake.yaml"
    overlay.write_text(yaml.safe_dump({"data": {"coca_root": "/no/coca", "segthor_root": "/no/segthor"}}))
    result = _snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config" / "coca.yaml"), str(overlay))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "checkpoint verify_layout:" in output and "rule ingest_segthor:" in output
    assert "download_coca" not in output


def test_lint_is_clean_for_the_acquisition_rules(tmp_path):
    configs = [str(ROOT / "config" / "coca.yaml"), str(ROOT / "config" / "coca-download.yaml")]
    result = _snakemake(tmp_path, "--lint", "--configfile", *configs, str(_download_overlay(tmp_path)))
    output = result.stdout + result.stderr  # (lints of other stages' rules are test_config_schema's business)
    for rule in ("download_coca", "download_segthor", "verify_layout", "ingest_gated", "ingest_nongated",
                 "ingest_segthor"):  # fmt: skip
        assert f"Lints for rule {rule} " not in output, output
    assert "localrules directive specifies rules that are not present" not in output


def test_schema_accepts_download_and_rejects_bad_values():
    cfg = yaml.safe_load((ROOT / "config" / "coca.yaml").read_text())
    cfg["data"]["source"] = "download"
    cfg["download"]["segthor_archive"] = ["a.zip", "https://x/b.tar.gz"]
    cfg["download"]["segthor_sha256"] = ["a" * 64, "B" * 64]
    validate(cfg, str(SCHEMA))
    minimal = {"data": {"source": "local", "coca_root": "/c", "segthor_root": "/s"}}
    validate(minimal, str(SCHEMA))
    assert minimal["download"]["coca_sas_env"] == "COCA_SAS_URL" and minimal["download"]["verify"] == "error"
    assert minimal["download"]["expect"]["gated"] is None
    from snakemake.exceptions import WorkflowError

    for key, value in (("coca_sas_env", "https://x?sig=1"), ("segthor_sha256", "abc"), ("verify", "maybe")):
        bad = yaml.safe_load((ROOT / "config" / "coca.yaml").read_text())
        bad["download"][key] = value
        with pytest.raises(WorkflowError, match=key):
            validate(bad, str(SCHEMA))


def test_cli_lists_the_acquisition_commands(capsys):
    with pytest.raises(SystemExit):
        cacs_main(["--help"])
    out = capsys.readouterr().out
    assert "download-coca" in out and "download-segthor" in out and "verify-layout" in out
