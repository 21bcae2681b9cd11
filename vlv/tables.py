"""The paper's tables as CSV files, from the per-captioner evaluation JSON files.

``coco.csv`` (Table 1): one row per captioner: the caption -> image distance at each guidance scale
(FD-toyCLIP in the toy profile, FID in the paper profile, named in the ``metric`` column) and the
reference-based caption metrics; every row names the data set, profile and metric implementations.
A ``.manifest.json`` beside each table lists the files it was made from.

Example:
    python -m vlv.tables coco --profile toy --dataset "Shapes eval split (200 images)" \
        --fid results/evaluate/fid/*.json --caption-metrics results/evaluate/caption_metrics/*.json \
        --out results/tables/coco.csv
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from .manifest import build_manifest, write_manifest

CAPTION_METRICS = ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "CLIPScore", "RefCLIPScore"]


def _name(path: str) -> str:
    return Path(path).stem


def coco_rows(fid_files: list[str], metric_files: list[str], profile: str, dataset: str) -> list[dict]:
    metrics = {_name(f): json.loads(Path(f).read_text()) for f in metric_files}
    rows = []
    for f in fid_files:
        name, fid = _name(f), json.loads(Path(f).read_text())
        if name not in metrics:
            raise SystemExit(f"no caption metrics for captioner {name!r} (expected beside {f})")
        m = metrics[name]
        row = {"captioner": name, "dataset": dataset, "profile": profile, "images": fid["images"]}
        row["metric"] = fid["metric"]
        row.update({f"{fid['metric']} cfg{g}": round(v, 4) for g, v in fid["guidance"].items()})
        row.update({k: ("not computed" if m.get(k) is None else round(m[k], 4)) for k in CAPTION_METRICS})
        row["implementation"] = m["implementation"]
        rows.append(row)
    return rows


def write_table(rows: list[dict], out: str | Path, sources: list[str]) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    manifests = [str(Path(s).with_suffix(".manifest.json")) for s in sources]
    write_manifest(
        out.with_suffix(".manifest.json"),
        build_manifest("tables", {"table": out.name}, None, sources=sources, source_manifests=manifests),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table", choices=["coco"])
    p.add_argument("--profile", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--fid", nargs="+", required=True)
    p.add_argument("--caption-metrics", nargs="+", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    rows = coco_rows(args.fid, args.caption_metrics, args.profile, args.dataset)
    write_table(rows, args.out, args.fid + args.caption_metrics)
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
