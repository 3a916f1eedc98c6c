"""Shared-access (SAS) URLs: read one from the environment, check it, keep it out of every text.

A SAS URL is a bearer credential: whoever has it can download the data set
until it expires.  So it is read from an environment variable whose *name*
is in the config (never the URL itself, which would end up in Snakemake's
printed shell commands and in ``.snakemake/`` metadata), checked for expiry
before any network use, and every line relayed from azcopy, every error
message and every file this package writes goes through :func:`redact`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from urllib.parse import parse_qs, quote, unquote, urlsplit, urlunsplit

from cacs.acquire import AIMI_COCA_PAGE, AcquireError

REDACTED = "<redacted>"
_SIG = re.compile(r"(?i)(sig(?:=|%3D))[^&\s\"'<>]+")
_URL_QUERY = re.compile(r"(?i)(https?://[^\s?\"'<>]+)\?(?!<redacted>)[^\s\"'<>]+")


def _variants(secret: str) -> set[str]:
    """The secret as written, URL-decoded and URL-encoded (azcopy prints either)."""
    out = {secret, unquote(secret), quote(secret, safe=""), quote(unquote(secret), safe="")}
    return {s for s in out if len(s) >= 6}


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with known secrets, any ``sig=`` value and any URL query string replaced.

    Belt and braces: the known secrets (the URL, its query, its signature)
    are removed literally in every encoding, then anything that still looks
    like a signature or a URL query string is removed by pattern, so a SAS
    URL that azcopy re-encodes or truncates does not slip through either.
    """
    expanded = {part for s in secrets if s for part in (url_secrets(s) if "?" in s else [s])}
    for secret in sorted({v for s in expanded for v in _variants(s)}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _SIG.sub(lambda m: m.group(1) + REDACTED, text)
    return _URL_QUERY.sub(lambda m: m.group(1) + "?" + REDACTED, text)


def public_part(url: str) -> str:
    """Scheme, host and path of ``url``: what may be logged and stored."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def url_secrets(url: str) -> list[str]:
    """The strings of ``url`` that must never be shown: its query string and its signature.

    Scheme, host and path stay visible (they say which download failed).
    """
    parts = urlsplit(url)
    secrets = [parts.query]
    secrets += parse_qs(parts.query).get("sig", [])
    return [s for s in secrets if s]


def missing_variable_message(env_name: str) -> str:
    return (
        f"environment variable {env_name} is not set. It must hold the time-limited azcopy shared-access "
        f"URL of COCA (https://<account>.blob.core.windows.net/<container>?sv=...&se=...&sig=...). Get it by "
        f"registering and accepting the research-use agreement at {AIMI_COCA_PAGE} and copying the URL the "
        f"download page shows, then: export {env_name}='<the URL>' (in the shell that runs snakemake; "
        f"keep it out of config files and shell history)"
    )


def read_sas_url(env_name: str, environ: Mapping[str, str] | None = None) -> str:
    """The SAS URL held by ``env_name``, checked for form (not yet for expiry)."""
    environ = os.environ if environ is None else environ
    url = (environ.get(env_name) or "").strip().strip("'\"")
    if not url:
        raise AcquireError(missing_variable_message(env_name))
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc:
        raise AcquireError(
            f"environment variable {env_name} does not hold an https URL (value not shown); it must be the "
            f"azcopy shared-access URL from {AIMI_COCA_PAGE}"
        )
    if "sig" not in parse_qs(parts.query):
        raise AcquireError(
            f"environment variable {env_name} holds a URL without a 'sig=' signature ({public_part(url)}); "
            f"copy the whole shared-access URL, query string included, from {AIMI_COCA_PAGE}"
        )
    return url


def _parse_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def sas_expiry(url: str) -> datetime | None:
    """The ``se=`` (signed expiry) time of a SAS URL, in UTC; ``None`` if absent or unparseable."""
    values = parse_qs(urlsplit(url).query).get("se")
    return _parse_time(values[0]) if values else None


def check_not_expired(url: str, env_name: str, now: datetime | None = None) -> datetime | None:
    """Fail before any network use when the URL's ``se=`` expiry is in the past."""
    now = now or datetime.now(UTC)
    expiry = sas_expiry(url)
    if expiry is not None and expiry <= now:
        raise AcquireError(
            f"the shared-access URL in {env_name} ({public_part(url)}) expired on "
            f"{expiry.astimezone(UTC):%Y-%m-%d %H:%M} UTC (its se= field). Shared-access URLs are time-limited: "
            f"get a fresh one from {AIMI_COCA_PAGE} and export {env_name} again; the download resumes "
            f"where it stopped"
        )
    return expiry
