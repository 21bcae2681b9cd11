"""Fetch the paper profile's data files: resumable HTTP downloads, SHA-256 checks, safe zip reading.

``fetch`` streams a URL into ``<dest>.part`` and resumes from the bytes already there with an HTTP
``Range`` request (a connection that breaks off is retried from where it stopped; a server that
ignores ``Range`` restarts the file). The finished file is checked against a pinned SHA-256 when
the config gives one (a mismatch is an error and the bad bytes are kept aside as
``<dest>.corrupt``); without one the digest is computed and recorded, so that it can be pinned.
Only then is the file renamed to ``dest``: a file at ``dest`` is always complete.

``safe_zip_members`` is the gate every archive read goes through: an entry whose name is absolute,
has a drive, or has a ``..`` component (zip-slip), or that is a symbolic link, is refused with the
entry named, before anything is written.

Example (what the ``download`` rule runs):
    python -m vlv.paper_data.download --params '{"url": "http://images.cocodataset.org/zips/val2014.zip",
        "sha256": null}' --out data/download/val2014.zip
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
import urllib.error
import urllib.request
import zipfile
from http.client import HTTPException
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from vlv.cli_common import load_params, setup_logging, stage_parser

log = logging.getLogger("vlv.paper_data.download")

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    pass


class UnsafeArchive(ValueError):
    pass


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _open(url: str, offset: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "vlv-download/1"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(req, timeout=timeout)


def _stream(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One attempt: append to ``part`` from its current size (or restart when Range is ignored)."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to send: the part file is already whole
            return
        raise
    with resp:
        if offset and resp.status != 206:
            log.info("%s: the server ignored the Range request; starting the file again", url)
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        mode = "ab" if offset else "wb"
        with (
            open(part, mode) as f,
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=part.name, disable=not progress) as bar,
        ):
            received = 0
            while block := resp.read(CHUNK):
                f.write(block)
                received += len(block)
                bar.update(len(block))
        if length is not None and received < int(length):
            raise DownloadError(f"{url}: connection closed after {offset + received} of {total} bytes")


def fetch(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 2.0,
    progress: bool = True,
) -> dict:
    """Download ``url`` to ``dest`` (resuming a ``dest.part``); return what was fetched and its digest."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resumed_from = part.stat().st_size if part.exists() else 0
    attempts = 0
    while True:
        attempts += 1
        try:
            _stream(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as e:
            if e.code < 500 and e.code != 429:  # 404, 403, ...: retrying will not help
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
            err = f"HTTP {e.code}"
        except (urllib.error.URLError, HTTPException, OSError, DownloadError) as e:
            err = f"{type(e).__name__}: {e}"
        if attempts > retries:
            have = part.stat().st_size if part.exists() else 0
            raise DownloadError(
                f"{url}: gave up after {attempts} attempts ({err}); {have} bytes are kept in {part} and "
                "the next run resumes from them"
            )
        log.warning("%s: attempt %d failed (%s); resuming in %.0f s", url, attempts, err, backoff)
        time.sleep(backoff)
    digest = sha256_file(part)
    if sha256 and digest != sha256.lower():
        bad = dest.with_name(dest.name + ".corrupt")
        part.replace(bad)
        raise DownloadError(
            f"{url}: SHA-256 mismatch: expected {sha256}, got {digest}. The bytes are kept in {bad} for "
            "inspection (delete it and rerun to download again); if the file changed upstream, update the "
            "checksum in the config only after checking the new file."
        )
    if not sha256:
        log.warning("%s: no SHA-256 pinned in the config; this download's is %s (pin it)", url, digest)
    part.replace(dest)
    return {
        "url": url,
        "file": str(dest),
        "bytes": dest.stat().st_size,
        "sha256": digest,
        "sha256_pinned": bool(sha256),
        "attempts": attempts,
        "resumed_from_bytes": resumed_from,
    }


def safe_zip_members(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """Every entry of the archive, after refusing any that could write outside the target folder."""
    members = zf.infolist()
    for info in members:
        name = info.filename.replace("\\", "/")
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":"):
            raise UnsafeArchive(f"{zf.filename}: entry '{info.filename}' would escape the target folder; refusing")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchive(f"{zf.filename}: entry '{info.filename}' is a symbolic link; refusing")
    return members


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, names: list[str] | None = None) -> list[Path]:
    """Extract (the named entries of) a zip into ``dest``; nothing is written if any entry is unsafe."""
    dest = Path(dest)
    with zipfile.ZipFile(archive) as zf:
        members = safe_zip_members(zf)
        if names is not None:
            wanted = set(names)
            members = [m for m in members if m.filename in wanted]
            missing = wanted - {m.filename for m in members}
            if missing:
                raise FileNotFoundError(f"{archive}: no entries {sorted(missing)}")
        out = []
        for m in members:
            out.append(Path(zf.extract(m, dest)))
    return out


def read_zip_json(archive: str | os.PathLike, suffix: str):
    """The JSON entry of a zip whose name ends with ``suffix`` (after the safety check)."""
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in safe_zip_members(zf) if m.filename.endswith(suffix)]
        if len(members) != 1:
            raise FileNotFoundError(
                f"{archive}: expected one entry ending in '{suffix}', found {[m.filename for m in members]}"
            )
        with zf.open(members[0]) as f:
            return json.load(f)


def main(argv=None) -> int:
    p = stage_parser(__doc__)
    p.add_argument("--out", required=True, help="the file to write")
    args = p.parse_args(argv)
    setup_logging()
    cfg = load_params(args.params)
    try:
        record = fetch(cfg["url"], args.out, cfg.get("sha256"), retries=int(cfg.get("retries", 5)))
    except DownloadError as e:
        raise SystemExit(f"download failed: {e}") from None
    Path(args.out + ".json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    log.info("%s: %d bytes, sha256 %s", args.out, record["bytes"], record["sha256"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
