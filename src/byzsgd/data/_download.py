"""Download a data file from a list of mirrors, verifying a checksum before accepting it.

A file is written under a temporary name in the destination directory and moved into place
(``os.replace``, atomic on one file system) only once its checksum matched, so an interrupted
or corrupted download never leaves a file that a later load would take for a good one.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("byzsgd.data")

#: Seconds to wait for a mirror to answer (per socket operation, not for the whole file).
TIMEOUT = 30.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Checksum:
    """The expected digest of a file.

    ``decompressed=True`` hashes the gunzipped content of a ``.gz`` file instead of the file
    itself: the same data set is served gzip-compressed with different compressors (and so
    different ``.gz`` bytes) by different mirrors, while the uncompressed bytes are the
    originals everywhere.
    """

    algorithm: str
    hexdigest: str
    decompressed: bool = False

    def __post_init__(self) -> None:
        if self.algorithm not in hashlib.algorithms_guaranteed:
            raise ValueError(f"Checksum.algorithm must be one of hashlib's guaranteed "
                             f"algorithms, got {self.algorithm!r}")


def file_digest(path: Path, algorithm: str, *, decompressed: bool = False) -> str:
    """Hex digest of ``path`` (of its gunzipped content when ``decompressed``)."""
    digest = hashlib.new(algorithm)
    opener = gzip.open if decompressed else open
    with opener(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, checksum: Checksum) -> str | None:
    """``None`` when ``path`` matches ``checksum``, else a one-line reason."""
    try:
        got = file_digest(path, checksum.algorithm, decompressed=checksum.decompressed)
    except (OSError, EOFError, zlib.error) as err:  # OSError includes gzip.BadGzipFile
        # A truncated or non-gzip body (e.g. an HTML error page) fails here.
        return f"unreadable ({err})"
    if got != checksum.hexdigest.lower():
        what = "uncompressed content" if checksum.decompressed else "file"
        return (f"{checksum.algorithm} of the {what} is {got}, "
                f"expected {checksum.hexdigest.lower()}")
    return None


class DownloadError(OSError):
    """Every mirror failed; ``attempts`` holds one ``(url, reason)`` pair per mirror."""

    def __init__(self, remote_name: str, attempts: list[tuple[str, str]]) -> None:
        # Not OSError's ``filename`` attribute: it would replace the message in str().
        self.remote_name = remote_name
        self.attempts = attempts
        lines = "\n".join(f"  {url}: {reason}" for url, reason in attempts)
        super().__init__(f"could not download {remote_name} from any mirror:\n{lines}")


def fetch(filename: str, mirrors: Sequence[str], dest_dir: Path, checksum: Checksum | None,
          *, timeout: float = TIMEOUT) -> Path:
    """Fetch ``filename`` from the first mirror that serves it with a matching checksum.

    Each mirror is a base URL; the file's URL is ``mirror.rstrip('/') + '/' + filename``.
    Mirrors are tried in order; a network error, an HTTP error or a checksum mismatch moves
    on to the next one. Returns the path of the verified file, ``dest_dir / filename``.
    Raises :class:`DownloadError` listing every mirror's failure when none succeeded.
    """
    if not mirrors:
        raise DownloadError(filename, [("(no mirror)", "no download mirror is configured")])
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / filename
    attempts: list[tuple[str, str]] = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        logger.info("downloading %s", url)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
                shutil.copyfileobj(r, out, _CHUNK)
            problem = verify(tmp, checksum) if checksum is not None else None
            if problem is None:
                os.replace(tmp, target)
                return target
            attempts.append((url, f"checksum mismatch: {problem}"))
            logger.warning("rejected %s: checksum mismatch: %s", url, problem)
        # URLError, HTTPError, timeouts and socket errors are OSErrors; a connection cut
        # mid-body raises http.client.IncompleteRead; a malformed URL raises ValueError.
        except (OSError, http.client.HTTPException, ValueError) as err:
            attempts.append((url, str(err) or type(err).__name__))
            logger.warning("failed %s: %s", url, err)
        finally:
            tmp.unlink(missing_ok=True)
    raise DownloadError(filename, attempts)
