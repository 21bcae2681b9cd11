"""Teacher captions for the stage-2 pair set, append-only and resumable.

Captions are appended, one JSON line per image, to ``--work`` (a file Snakemake does not delete
when the job fails); the images are streamed from the shards one batch at a time. A rerun reads it first and captions only the images not in it, so a stopped
run continues where it stopped and no image is captioned twice. A torn last line (a kill mid-write)
is dropped and redone. Each line names the sample it was made from (a digest of its image and
metadata bytes) and the teacher settings (``TEACHER_KEYS``): a line made for other images under the
same keys (a split drawn with another seed) or by another teacher is not reused, and those images
are captioned again. Images the teacher could not caption (e.g. an API that kept failing) are
recorded in ``<work>.failures.jsonl`` and retried by the next run. When every image is done, the
captions are written, sorted by key, to ``--out`` with a manifest beside it.

Backends (the ``teacher`` config section): ``shapes_oracle`` (toy: the exhaustive caption from the
scene graph), ``local`` (an open VLM through transformers, batched on the GPU), ``api`` (an
OpenAI-compatible endpoint; only with a key in the environment variable the config names).

Example:
    python -m vlv.stages.synthesize_captions --params "$(python -m vlv.config teacher)" \
        --shapes "$(python -m vlv.config shapes)" --images results/generate_shapes/pairs \
        --out results/synthesize_captions/captions.jsonl --work work/toy/synthesize_captions/captions.jsonl
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from tqdm import tqdm

from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.data.records import RecordsError, append_records, read_records
from vlv.data.shards import ShardIndex, iter_batches, iter_dir
from vlv.manifest import build_manifest, write_manifest
from vlv.models.captioners import CaptionFailure, make_teacher
from vlv.training import fingerprint, pick_device

# The teacher settings a caption depends on (not batch size, rate limits or timeouts).
TEACHER_KEYS = ("backend", "model", "prompt", "max_new_tokens")


def sample_digests(directory) -> dict[str, str]:
    """key -> a digest of the sample's bytes (its image and its metadata), read from the shards."""
    out = {}
    for key, parts in iter_dir(directory):
        h = hashlib.sha256()
        for ext in sorted(parts):
            h.update(ext.encode() + b"\0" + parts[ext])
        out[key] = h.hexdigest()[:16]
    return out


def reusable(records: list[dict], digests: dict[str, str], teacher: str) -> tuple[dict[str, str], int]:
    """key -> caption of the records made from these very samples by this teacher setting, and how
    many records were not (stale: made for other images under the same key, or by another teacher)."""
    done: dict[str, str] = {}
    for r in records:
        if r.get("sample") == digests.get(r["key"]) and r.get("teacher_config") == teacher:
            done.setdefault(r["key"], r["caption"])
    return done, sum(r["key"] not in done for r in records)


def caption_batch(teacher, keys: list[str], images, metas: list[dict]) -> tuple[list[dict], list[dict]]:
    """A batch's caption records and failures: one call for the batch, and where it fails one call per
    image to find the failing ones; an empty caption is a failure too."""
    try:
        recs = [{"key": k, "caption": c} for k, c in zip(keys, teacher.caption(images, metas), strict=True)]
        failures = []
    except CaptionFailure:  # caption one by one to find and record the failing images
        recs, failures = [], []
        for i, k in enumerate(keys):
            try:
                recs.append({"key": k, "caption": teacher.caption(images[[i]], [metas[i]])[0]})
            except CaptionFailure as e:
                failures.append({"key": k, "error": str(e)})
    failures += [
        {"key": r["key"], "error": "the teacher returned an empty caption"} for r in recs if not r["caption"].strip()
    ]
    return [r for r in recs if r["caption"].strip()], failures


def run_teacher(args, cfg: dict, done: dict, n_todo: int, stamp: dict) -> tuple[list[dict], float]:
    """Caption up to ``n_todo`` images not in ``done``, appending each batch's records (with ``stamp``:
    the sample digests and the teacher's fingerprint) to the work file and to ``done``; returns the
    failures and the seconds it took."""
    work, digests = Path(args.work), stamp["digests"]
    teacher = make_teacher(cfg, json.loads(args.shapes) if args.shapes else None, pick_device(args.device))
    bar = tqdm(total=n_todo, desc=f"teacher {teacher.name}", unit="img", mininterval=5)
    failures, t0, left = [], time.time(), n_todo
    for batch_keys, images, metas in iter_batches(args.images, int(cfg["batch_size"]), skip=set(done)):
        if left <= 0:
            break
        batch_keys, images, metas = batch_keys[:left], images[:left], metas[:left]
        left -= len(batch_keys)
        recs, failed = caption_batch(teacher, batch_keys, images, metas)
        failures += failed
        for r in recs:
            r.update(teacher=teacher.name, sample=digests[r["key"]], teacher_config=stamp["teacher_config"])
        append_records(work, recs)
        done.update((r["key"], r["caption"]) for r in recs)
        bar.update(len(batch_keys))
        bar.set_postfix(img_per_s=f"{bar.n / max(time.time() - t0, 1e-9):.1f}", refresh=False)
    bar.close()
    return failures, time.time() - t0


def write_captions(out: Path, keys: list[str], done: dict) -> None:
    """The captions file: one ``{"key", "caption"}`` line per image, in key order, written whole."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w") as f:
        for k in sorted(keys):
            f.write(json.dumps({"key": k, "caption": done[k]}, sort_keys=True) + "\n")
    tmp.replace(out)


def main(argv=None) -> int:
    p = stage_parser(__doc__)
    p.add_argument("--images", required=True, help="shard folder of the images to caption")
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True, help="the append-only JSONL (kept when the job fails)")
    p.add_argument("--shapes", default=None, help="the Shapes world config as JSON (shapes_oracle backend)")
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, default=None, help="caption at most this many new images, then stop")
    args = p.parse_args(argv)
    log = setup_logging()
    cfg = load_params(args.params)
    work = Path(args.work)
    work.parent.mkdir(parents=True, exist_ok=True)
    failures_path = work.with_suffix(".failures.jsonl")

    keys = ShardIndex(args.images).keys  # from the tar headers; the images are streamed below
    if not keys:
        raise SystemExit(f"no images in {args.images}")
    stamp = {
        "digests": sample_digests(args.images),
        "teacher_config": fingerprint({k: cfg.get(k) for k in TEACHER_KEYS}),
    }
    try:
        recorded = read_records(work, ("key", "caption"))
    except RecordsError as e:
        raise SystemExit(str(e)) from None
    done, stale = reusable(recorded, stamp["digests"], stamp["teacher_config"])
    if stale:
        log.warning("%d captions in %s were made for other images or by another teacher: not reused", stale, work)
    n_todo = sum(k not in done for k in keys)
    if args.limit is not None:
        n_todo = min(n_todo, args.limit)
    log.info("%d images, %d captioned before, %d to caption now", len(keys), len(done), n_todo)
    failures, seconds = run_teacher(args, cfg, done, n_todo, stamp) if n_todo else ([], 0.0)
    if failures:
        append_records(failures_path, failures)
    missing = [k for k in keys if k not in done]
    if missing:
        raise SystemExit(
            f"{len(missing)} of {len(keys)} images have no teacher caption yet "
            f"({len(failures)} failed this run, listed in {failures_path}); rerun to continue"
        )
    out = Path(args.out)
    write_captions(out, keys, done)
    write_manifest(
        out.with_name("manifest.json"),
        build_manifest(
            "synthesize_captions",
            cfg,
            None,
            images=args.images,
            captions=len(keys),
            captioned_this_run=n_todo - len(failures),
            seconds_this_run=round(seconds, 2),
            images_per_second=round((n_todo - len(failures)) / seconds, 2) if seconds else None,
            failures_file=str(failures_path) if failures_path.exists() else None,
        ),
    )
    log.info("wrote %d teacher captions to %s", len(keys), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
