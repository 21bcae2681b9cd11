"""The paper profile's stage-1 image pool: LAION metadata -> the paper's filters -> img2dataset -> shards.

``run`` (rule ``download_laion``; img2dataset pins pandas<3, so it lives in its own environment,
``envs/img2dataset.yml``; this module needs only pandas and the standard library, so it runs in
either) does three steps:

1. read the metadata parquet file(s) (LAION-2B-en-aesthetic columns ``URL``, ``TEXT``, ``WIDTH``,
   ``HEIGHT``, ``pwatermark``) and keep the rows that pass the paper's filters where the metadata
   has the column: shorter side at least ``min_side``, aspect ratio in [``min_aspect``,
   ``max_aspect``], watermark probability below ``max_watermark`` (a missing value is kept: the
   image is checked again after the download by ``subset``), counting the rows dropped per reason;
2. img2dataset (the configured executable) downloads the list into WebDataset shards (``NNNNN.tar``
   with ``<key>.jpg`` and ``<key>.json``, and per shard a parquet file with every URL's status and
   error message); its output stays in ``--work`` until the run completes, so a rerun continues it;
3. the shards move into the pool folder as ``shard-NNNNN.tar`` (the layout every stage reads), each
   URL that could not be fetched (dead link, timeout, refused image) is recorded with its error in
   ``failures.parquet``, and the counts go to ``downloads.json``.

``metadata`` fetches the metadata parquet files from ``metadata_urls`` (resumable, via
``vlv.paper_data.download``) when they are not already in the metadata folder.

``pairs``: stage 2's images, a seeded sample of ``n`` keys of the stage-1 subset copied into their
own shards (the paper captions 6M of its 40M images).

Examples:
    python -m vlv.paper_data.prepare_laion run --params "$(python -m vlv.config data.laion ...)" \
        --metadata data/laion/metadata --work work/paper/download_laion --out results/paper/download_laion/pool
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd


def read_metadata(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise SystemExit(f"no metadata parquet files in {path}")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def filter_metadata(df: pd.DataFrame, cfg: dict) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows passing the paper's filters, and how many were dropped for each reason (first reason wins)."""
    url = cfg["url_col"]
    if url not in df.columns:
        raise SystemExit(f"the metadata has no URL column '{url}' (columns: {list(df.columns)})")
    reason = pd.Series("", index=df.index)

    def drop(mask, why):
        reason[(reason == "") & mask.fillna(False).astype(bool)] = why

    drop(df[url].isna() | (df[url].astype(str).str.len() == 0), "no URL")
    if {"WIDTH", "HEIGHT"} <= set(df.columns):
        w, h = df["WIDTH"].astype(float), df["HEIGHT"].astype(float)
        drop(pd.concat([w, h], axis=1).min(axis=1) < cfg["min_side"], f"shorter side below {cfg['min_side']}")
        aspect = w / h
        drop((aspect < cfg["min_aspect"]) | (aspect > cfg["max_aspect"]), "aspect ratio out of range")
    if "pwatermark" in df.columns:
        drop(df["pwatermark"].astype(float) >= cfg["max_watermark"], f"watermark probability >= {cfg['max_watermark']}")
    counts = {k: int(v) for k, v in Counter(reason[reason != ""]).items()}
    return df[reason == ""].reset_index(drop=True), counts


def collect(work: Path, out: Path) -> dict:
    """img2dataset's output folder -> ``out/shard-NNNNN.tar`` plus the per-URL failure record; the counts."""
    out.mkdir(parents=True, exist_ok=True)
    tars = sorted(work.glob("[0-9]*.tar"))
    for tar in tars:
        shutil.move(tar, out / f"shard-{tar.stem}.tar")
    status = pd.concat([pd.read_parquet(p) for p in sorted(work.glob("[0-9]*.parquet"))], ignore_index=True)
    failed = status[status["status"] != "success"]
    failed[["url", "status", "error_message"]].reset_index(drop=True).to_parquet(out / "failures.parquet")
    errors = Counter(str(e).split(":")[0] for e in failed["error_message"])
    summary = {
        "urls": len(status),
        "downloaded": int((status["status"] == "success").sum()),
        "failed": len(failed),
        "by_status": {k: int(v) for k, v in Counter(status["status"]).items()},
        "by_error": dict(errors.most_common(20)),
        "shards": len(tars),
    }
    return summary


def img2dataset_argv(cfg: dict, urls: Path, work: Path) -> list[str]:
    """img2dataset's command line: the centred square at ``image_size`` (or the original bytes when
    it is null), the paper's size and aspect limits on the downloaded original, incremental (a rerun
    continues an interrupted download)."""
    return [
        cfg["img2dataset"],
        "--url_list", str(urls), "--input_format", "parquet",
        "--url_col", cfg["url_col"], "--caption_col", cfg["caption_col"],
        "--output_format", "webdataset", "--output_folder", str(work),
        "--processes_count", str(cfg["processes"]), "--thread_count", str(cfg["threads"]),
        "--number_sample_per_shard", str(cfg["shard_size"]),
        *(["--resize_mode", "center_crop", "--image_size", str(cfg["image_size"]), "--resize_only_if_bigger", "False"]
          if cfg.get("image_size") else ["--resize_mode", "no"]),
        "--min_image_size", str(cfg["min_side"]),
        "--max_aspect_ratio", str(max(cfg["max_aspect"], 1 / cfg["min_aspect"])),
        "--retries", str(cfg["retries"]), "--timeout", str(cfg["timeout"]),
        "--incremental_mode", "incremental", "--enable_wandb", "False",
    ]  # fmt: skip


def run(cfg: dict, metadata: str, work: Path, out: Path) -> dict:
    import subprocess

    work.mkdir(parents=True, exist_ok=True)
    urls = work / "urls.parquet"
    df = read_metadata(metadata)
    kept, dropped = filter_metadata(df, cfg)
    kept.to_parquet(urls)
    print(f"{len(kept)} of {len(df)} URLs pass the metadata filters; dropped {dropped}", flush=True)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}  # no update check against PyPI
    try:
        subprocess.run(img2dataset_argv(cfg, urls, work / "shards"), check=True, env=env)
    except FileNotFoundError:
        raise SystemExit(
            f"img2dataset not found ('{cfg['img2dataset']}'). It pins pandas<3, so it lives in its own "
            "environment: run Snakemake with --use-conda (envs/img2dataset.yml), or `python3 -m venv "
            ".venv-img2dataset && .venv-img2dataset/bin/pip install -r requirements-img2dataset.txt` and set "
            "data.laion.img2dataset to .venv-img2dataset/bin/img2dataset"
        ) from None
    summary = collect(work / "shards", out)
    summary["metadata"] = {"rows": len(df), "kept": len(kept), "dropped": dropped}
    (out / "downloads.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(work)  # done: a later rerun starts a fresh download
    return summary


def fetch_metadata(urls: list[str], out: Path) -> list[str]:
    from vlv.paper_data.download import fetch

    if not urls:
        raise SystemExit(
            f"no LAION metadata: put the parquet files in {out} or list their URLs in data.laion.metadata_urls. "
            "(LAION withdrew the original LAION-2B-en-aesthetic release in 2023; use your copy or a re-release.)"
        )
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for url in urls:
        name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
        fetch(url, out / name)
        names.append(name)
    return names


def select_pairs(images: str, subset: str, n: int, seed: int, out: Path, shard_size: int) -> int:
    """A seeded sample of ``n`` kept keys of the subset, copied (bytes unchanged) into new shards."""
    import numpy as np

    from vlv.data.shards import iter_dir, write_shard

    kept = sorted(r["key"] for r in json.loads(Path(subset).read_text())["kept"])
    chosen = set(kept) if n >= len(kept) else {kept[i] for i in np.random.default_rng(seed).permutation(len(kept))[:n]}
    out.mkdir(parents=True, exist_ok=True)
    batch, s, total = [], 0, 0
    for key, parts in iter_dir(images):
        if key in chosen:
            batch.append((key, parts))
        if len(batch) == shard_size:
            total += write_shard(out / f"shard-{s:05d}.tar", batch)
            batch, s = [], s + 1
    if batch:
        total += write_shard(out / f"shard-{s:05d}.tar", batch)
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="filter, img2dataset, collect")
    r.add_argument("--params", required=True, help="JSON: the data.laion section plus min_side, min_aspect, max_aspect")
    r.add_argument("--metadata", required=True)
    r.add_argument("--work", required=True, help="img2dataset's resumable output (kept until the run completes)")
    r.add_argument("--out", required=True)
    m = sub.add_parser("metadata", help="fetch the metadata parquet files")
    m.add_argument("--urls", nargs="*", default=[])
    m.add_argument("--out", required=True)
    q = sub.add_parser("pairs", help="stage 2's images: a seeded sample of the stage-1 subset")
    q.add_argument("--images", required=True)
    q.add_argument("--subset", required=True)
    q.add_argument("--n", type=int, required=True)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--shard-size", type=int, default=10000)
    q.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.what == "run":
        summary = run(json.loads(args.params), args.metadata, Path(args.work), Path(args.out))
        print(f"{args.out}: {summary['downloaded']} of {summary['urls']} URLs downloaded; {summary['by_error']}")
    elif args.what == "metadata":
        print(f"{args.out}: {fetch_metadata(args.urls, Path(args.out))}")
    else:
        n = select_pairs(args.images, args.subset, args.n, args.seed, Path(args.out), args.shard_size)
        print(f"{args.out}: {n} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
