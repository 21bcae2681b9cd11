"""WebDataset-style tar shards: ``<key>.png`` (or .jpg) plus ``<key>.json`` per sample.

Writing is deterministic (fixed member metadata, sorted keys within a sample), so the same samples
give the same bytes. Reading never crashes on a bad member: it yields what it can and the caller
decides (``decode_image`` raises ``BadImage`` with the reason). A shard cut short (a partial copy, a
full disk) or unreadable is read up to the break: its complete samples are used, the one being read
is left out, and the shard is reported once (a warning, and ``broken_shards()``, which every stage's
manifest records).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
SHARD_ERRORS = (tarfile.TarError, OSError, EOFError)  # what a cut-short or unreadable tar raises
_BROKEN: dict[str, dict] = {}  # shard path -> what was read of it and why it stopped (this process)


def broken_shards() -> list[dict]:
    """The shards this process found cut short or unreadable: each one's path, the samples read from
    it, and the error. ``vlv.manifest.build_manifest`` records them in the stage's manifest."""
    return list(_BROKEN.values())


def cut_short(path: str | os.PathLike) -> bool:
    """Whether a tar file lacks its closing zero blocks: cut short at a member boundary, where tarfile
    stops reading without an error (every tar this project reads, its own and img2dataset's, ends
    with them)."""
    size = os.path.getsize(path)
    if size < 2 * tarfile.BLOCKSIZE:
        return True
    with open(path, "rb") as f:
        f.seek(size - 2 * tarfile.BLOCKSIZE)
        return f.read() != bytes(2 * tarfile.BLOCKSIZE)


CUT_SHORT = "the file ends without the archive's closing blocks: cut short"


def _report_broken(path: str | os.PathLike, samples_read: int, error: BaseException) -> None:
    entry = {"shard": str(path), "samples_read": samples_read, "error": f"{type(error).__name__}: {error}"}
    if str(path) not in _BROKEN:
        logging.getLogger("vlv").warning(
            "shard %s is broken after %d samples (%s): the samples before the break are used, the rest left out",
            path, samples_read, entry["error"],
        )  # fmt: skip
    _BROKEN[str(path)] = entry


class BadImage(ValueError):
    pass


def check_bad_share(bad: dict[str, str], seen: int, limit: float, stage: str) -> None:
    """Stop the stage (``SystemExit``) when more than ``limit`` of the ``seen`` samples are bad (no
    image, undecodable, missing from an archive; ``bad``: key -> reason), naming them: a few bad files
    are skipped and recorded, but that many means the data is wrong, not unlucky (the config key
    ``data.max_bad_share``)."""
    if seen and len(bad) / seen > limit:
        named = "; ".join(f"{k}: {r}" for k, r in list(bad.items())[:20]) + (" ..." if len(bad) > 20 else "")
        raise SystemExit(
            f"{stage}: {len(bad)} of {seen} samples are bad ({100 * len(bad) / seen:.1f} %, more than "
            f"data.max_bad_share {100 * limit:.1f} %): {named}"
        )


def encode_png(image: np.ndarray | Image.Image) -> bytes:
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def square_crop(img: Image.Image, size: int) -> Image.Image:
    """The centred square crop of an image, resized to ``size`` x ``size`` (bicubic)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


def decode_image(data: bytes) -> Image.Image:
    """An 8-bit RGB image as the picture is meant to be seen, or ``BadImage`` with the reason.

    Decoded fully (not just the header), so a truncated file is caught here. On the way to RGB:
    the EXIF orientation is applied (phone photos arrive upright); 16-bit images are scaled to 8
    bits (PIL's ``convert`` clips them: a 16-bit PNG came out almost white); transparency is
    composited over white (instead of showing whatever colour transparent pixels hide); CMYK goes
    through its embedded ICC profile where it has one. An image over PIL's decompression-bomb limit
    (``Image.MAX_IMAGE_PIXELS``) is refused, not decoded with a warning."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return _to_rgb(ImageOps.exif_transpose(im))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise BadImage(f"too large: {e}") from None
    except BadImage:
        raise
    except Exception as e:  # PIL raises many types for broken files
        raise BadImage(f"{type(e).__name__}: {e}") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        values = np.asarray(im, dtype=np.float64)
        if im.mode == "F" and values.size and not 0.0 <= values.min() <= values.max() <= 1.0:
            raise BadImage(f"a floating-point image with values outside 0..1 ({im.mode}): no defined 8-bit scale")
        scale = 255.0 if im.mode == "F" else 255.0 / 65535.0  # "I" is how PIL opens 16-bit PNGs, too
        return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "CMYK" and im.info.get("icc_profile"):
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
        return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def write_shard(path: str | os.PathLike, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, parts in samples:
            if "." in key or "/" in key:
                raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
            for ext in sorted(parts):
                data = parts[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
            n += 1
    tmp.replace(path)
    return n


def iter_shard(path: str | os.PathLike, strict: bool = False) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Samples of one shard in order; members of one key are grouped. A shard that breaks off is read
    up to the break and reported (``broken_shards``); ``strict``: raise instead."""
    key, parts, n = None, {}, 0
    try:
        with tarfile.open(path, "r") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = os.path.basename(member.name)
                k, _, ext = name.partition(".")
                if key is not None and k != key:
                    yield key, parts
                    n += 1
                    parts = {}
                key = k
                f = tar.extractfile(member)
                parts[ext] = f.read() if f is not None else b""
        if cut_short(path):
            raise tarfile.ReadError(CUT_SHORT)
    except SHARD_ERRORS as e:
        if strict:
            raise
        _report_broken(path, n, e)
        return  # the sample being read when it broke may lack parts: left out
    if key is not None:
        yield key, parts


def shard_paths(directory: str | os.PathLike) -> list[Path]:
    return sorted(Path(directory).glob("shard-*.tar"))


def iter_dir(directory: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes]]]:
    for p in shard_paths(directory):
        yield from iter_shard(p)


def image_bytes(parts: dict[str, bytes]) -> bytes | None:
    return next((parts[e] for e in IMAGE_EXTS if e in parts), None)


def stack_images(images: list[np.ndarray], where: str | os.PathLike) -> np.ndarray:
    """uint8 HxWx3 arrays -> NxHxWx3; images of different sizes are an error that says what to do."""
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise BadImage(
            f"{where}: images of {len(shapes)} different sizes (e.g. {sorted(shapes)[:2]}); the stages take one "
            "size: make the split at one size (data.image_size in the paper profile)"
        )
    return np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)


def load_images(
    directory: str | os.PathLike, keys: list[str] | None = None
) -> tuple[list[str], np.ndarray, list[dict]]:
    """Decode a shard folder (or the given keys of it) into uint8 NxHxWx3 with metadata, all in memory:
    for evaluation splits. Training sets go through ``vlv.data.loader`` (random access, loader workers)."""
    wanted = set(keys) if keys is not None else None
    out_keys, images, metas = [], [], []
    for key, parts in iter_dir(directory):
        if wanted is not None and key not in wanted:
            continue
        data = image_bytes(parts)
        if data is None:
            continue
        images.append(np.asarray(decode_image(data)))
        metas.append(json.loads(parts["json"]) if "json" in parts else {})
        out_keys.append(key)
    return out_keys, stack_images(images, directory), metas


def iter_batches(
    directory: str | os.PathLike, size: int, skip: set[str] | frozenset = frozenset()
) -> Iterator[tuple[list[str], np.ndarray, list[dict]]]:
    """A shard folder streamed in batches of ``size`` decoded samples (keys in ``skip`` left out):
    at most one batch of images in memory, whatever the size of the split."""
    keys, images, metas = [], [], []
    for key, parts in iter_dir(directory):
        data = image_bytes(parts)
        if data is None or key in skip:
            continue
        keys.append(key)
        images.append(np.asarray(decode_image(data)))
        metas.append(json.loads(parts["json"]) if "json" in parts else {})
        if len(keys) == size:
            yield keys, stack_images(images, directory), metas
            keys, images, metas = [], [], []
    if keys:
        yield keys, stack_images(images, directory), metas


class ShardIndex:
    """Where each sample's image lies in a shard folder (shard, byte offset, size), read from the tar
    headers only, so that a training set of any size is read at random without extracting it or
    holding it in memory. ``keys`` are in shard order (the order ``load_images`` gives); the position
    arrays are NumPy, which loader workers share without copying."""

    def __init__(self, directory: str | os.PathLike, keys: Iterable[str] | None = None):
        wanted = set(keys) if keys is not None else None
        self.directory = str(directory)
        self.paths = [str(p) for p in shard_paths(directory)]
        self.keys: list[str] = []
        shard, offset, size = [], [], []
        for s, path in enumerate(self.paths):
            end, n, last = os.path.getsize(path), 0, None
            try:
                with tarfile.open(path, "r:") as tar:  # headers only: tarfile seeks over the data
                    for member in tar:
                        k, _, ext = os.path.basename(member.name).partition(".")
                        last = k if member.isfile() else last
                        if not member.isfile() or ext not in IMAGE_EXTS or member.offset_data + member.size > end:
                            continue  # (an image whose bytes run past the end of a cut-short file: left out)
                        n += 1
                        if wanted is not None and k not in wanted:
                            continue
                        self.keys.append(k)
                        shard.append(s)
                        offset.append(member.offset_data)
                        size.append(member.size)
                if cut_short(path):
                    raise tarfile.ReadError(CUT_SHORT)
            except SHARD_ERRORS as e:
                if shard and shard[-1] == s and self.keys[-1] == last:  # the sample mid-break, as iter_shard
                    for column in (self.keys, shard, offset, size):
                        column.pop()
                    n -= 1
                _report_broken(path, n, e)
        self.shard = np.asarray(shard, dtype=np.int32)
        self.offset = np.asarray(offset, dtype=np.int64)
        self.size = np.asarray(size, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def missing(self, keys: Iterable[str]) -> list[str]:
        have = set(self.keys)
        return sorted(k for k in keys if k not in have)
