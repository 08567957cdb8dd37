"""Where a template's image comes from: the file bundled with cloudstack-management, a copy
in our cache, or a download (resumable, retried, checksum-verified) into that cache."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Optional, Union

from .checksum import Checksum
from .errors import SourceError
from .metadata import Metadata, TemplateSpec
from .settings import DownloadSettings

LOG = logging.getLogger(__name__)

BUNDLED, CACHED, DOWNLOAD = "bundled", "cached", "download"
_CHUNK = 1 << 20
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Source:
    kind: str  # bundled, cached or download
    path: str  # the local file (for a download: where it will be kept)
    url: str = ""
    bundled: str = ""  # for a download: the bundled file that is missing

    def describe(self) -> str:
        if self.kind == DOWNLOAD:
            return f"downloaded from {self.url}"
        return f"{self.kind} {self.path}"


def bundled_path(templates_dir: str, spec: TemplateSpec) -> str:
    # metadata.parse guarantees a plain file name, so this stays inside templates_dir.
    return os.path.join(templates_dir, spec.filename)


def locate(spec: TemplateSpec, meta: Metadata, templates_dir: str,
           settings: DownloadSettings) -> Union[Source, str]:
    """The source to use, or the reason there is none (a sentence for the report)."""
    bundled = bundled_path(templates_dir, spec)
    if os.path.isfile(bundled):
        return Source(BUNDLED, bundled)
    cached = os.path.join(settings.cache_dir, spec.filename)
    if os.path.isfile(cached):
        return Source(CACHED, cached)
    url = download_url(spec, meta, settings.repository)
    if url:
        return Source(DOWNLOAD, cached, url, bundled)
    what = "is not a regular file" if os.path.lexists(bundled) else "is missing"
    return (f"{bundled} {what} (metadata.ini [{spec.section}] names it) and there is no "
            "downloadurl: put the file there, or pass --download-repository")


def download_url(spec: TemplateSpec, meta: Metadata, repository: Optional[str]) -> str:
    """The URL to fetch, rewritten for a mirror as 4.22 does.

    With `downloadrepository` in metadata.ini, its first occurrence in the URL is replaced by
    the mirror; without it the mirror gets upstream's layout `<prefix>/<X.Y>/<file name>`.
    """
    url = spec.url
    if not repository or not url:
        return url
    if meta.download_repository and meta.download_repository in url:
        return url.replace(meta.download_repository, repository, 1)
    major_minor = ".".join(meta.release.split(".")[:2])
    return f"{repository.rstrip('/')}/{major_minor}/{url.rsplit('/', 1)[-1]}"


class _Transient(Exception):
    """A failure worth another attempt: a cut connection, a timeout, a 5xx."""


def fetch(source: Source, checksum: Optional[Checksum], settings: DownloadSettings) -> str:
    """Download into the cache, resuming a partial file; verify; keep it for the next run.

    :raises SourceError: after the attempts are used up, on a 4xx, or on a checksum mismatch.
    """
    import tenacity  # here, not at the top: most runs download nothing (~10 ms to import)

    os.makedirs(os.path.dirname(source.path), mode=0o755, exist_ok=True)
    part = source.path + ".part"
    progress = _Progress(part, checksum)
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(settings.attempts),
        wait=tenacity.wait_exponential(multiplier=settings.backoff, max=30),
        retry=tenacity.retry_if_exception_type(_Transient),
        before_sleep=lambda state: LOG.warning(
            "Download of %s failed (%s); retrying (attempt %d/%d)", source.url,
            state.outcome.exception(), state.attempt_number + 1, settings.attempts),
        reraise=True,
    )
    try:
        retrying(_fetch_once, source.url, progress, settings)
    except _Transient as exc:
        raise SourceError(
            f"{source.bundled} is missing, and downloading {source.url} failed: {exc} "
            f"({settings.attempts} attempt(s)).",
            "Check the network or the mirror"
            + (f"; the partial file {part} is kept and the next run resumes it."
               if progress.size else ".")) from None
    if checksum is not None:
        try:
            checksum.verify(progress.hasher, source.url)
        except SourceError:
            os.remove(part)
            raise
    os.replace(part, source.path)
    LOG.info("Downloaded %s (%d bytes) to %s", source.url, progress.size, source.path)
    return source.path


class _Progress:
    """The partial file and the digest of what it holds, carried across attempts."""

    def __init__(self, part: str, checksum: Optional[Checksum]):
        self.part = part
        self.checksum = checksum
        self.hasher = self._new_hasher()
        self.size = 0
        if os.path.exists(part):
            # A previous run left a partial file: hash it once and resume after it.
            with open(part, "rb") as stream:
                for chunk in iter(lambda: stream.read(_CHUNK), b""):
                    self.hasher.update(chunk)
                    self.size += len(chunk)

    def _new_hasher(self):
        return self.checksum.new_hasher() if self.checksum else _NoHash()

    def restart(self) -> None:
        """Forget the partial file: the server will send the whole file again."""
        self.hasher = self._new_hasher()
        self.size = 0
        os.truncate(self.part, 0)


class _NoHash:
    def update(self, data: bytes) -> None:
        pass


def _fetch_once(url: str, progress: _Progress, settings: DownloadSettings) -> None:
    import requests  # here, not at the top: ~55 ms of every run's start, for a download

    headers = {"Range": f"bytes={progress.size}-"} if progress.size else {}
    try:
        response = requests.get(url, headers=headers, stream=True,
                                timeout=(settings.connect_timeout, settings.read_timeout))
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Transient(_short(exc)) from exc
    with response:
        if response.status_code == 416 and progress.size:
            progress.restart()  # the partial file does not fit the server's; start over
            raise _Transient("the server refused to resume (416)")
        if response.status_code in _TRANSIENT_STATUS:
            raise _Transient(f"HTTP {response.status_code}")
        if response.status_code not in (200, 206):
            raise SourceError(f"Downloading {url} failed: HTTP {response.status_code} "
                              f"{response.reason}.",
                              "Check the URL in metadata.ini or --download-repository.")
        if response.status_code == 200 and progress.size:
            LOG.info("%s: the server does not resume; downloading from the start", url)
            progress.restart()
        _append(response, progress)


def _append(response, progress: _Progress) -> None:
    import requests

    try:
        with open(progress.part, "ab") as stream:
            for chunk in response.iter_content(_CHUNK):
                stream.write(chunk)
                progress.hasher.update(chunk)
                progress.size += len(chunk)
    except (requests.ConnectionError, requests.Timeout,
            requests.exceptions.ChunkedEncodingError) as exc:
        raise _Transient(f"connection cut after {progress.size} bytes ({_short(exc)})") from exc


def _short(exc: Exception) -> str:
    """The cause inside requests' nested messages ("[Errno 111] Connection refused")."""
    text = str(exc)
    for pattern in (r"\[Errno -?\d+\] [^'\")]+", r"Read timed out", r"IncompleteRead\([^)]*\)"):
        match = re.search(pattern, text)
        if match:
            return match.group(0)
    return text[:200]

