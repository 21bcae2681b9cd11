"""The paper's tables as CSV files, from the per-captioner evaluation JSON files.

``coco.csv`` (Table 1): one row per captioner: the caption -> image distance at each guidance scale
(FD-toyCLIP in the toy profile, FID in the paper profile, named in the ``metric`` column) and the
reference-based caption metrics; every row names the data set, profile and metric implementations.
``arena.csv`` (Table 2): each captioner's mean 0-6 rubric rating and the share at each level.
``vqa.csv`` (Table 3): questions answered from each captioner's captions alone, per number of
in-context examples: accuracy overall and per question kind, the share answered "unknown", the reader
and the metric.
``spatial.csv`` (Table 6): position and scale errors of the objects in stage-1 reconstructions (toy:
the Shapes detector against the scene graph; the scale error also signed, as a bias), per guidance
scale, beside the decoder's bound (true caption) and floor (empty caption).
``ablations.csv`` (Table 4): the number of learnable queries by reconstruction distance, the stage-2
trainable set by caption -> image distance; ``scaling.csv`` (Table 5): the stage-1 data share by
reconstruction distance, the LM decoder by caption -> image distance; ``no_stage1.csv`` (Table 7):
VLV against the captioner trained without stage 1; ``seeds.csv``: the headline figures (stage-1
reconstructions, VLV and the direct captioner) per seed, with their mean and spread. Toy rows add the Shapes detector's share of
objects found in reconstructions, or the Shapes judge's coverage and hallucinations of the captions.
A ``.manifest.json`` beside each table lists the files it was made from; a ``.json`` beside it holds
its numbers as hierarchical JSON (``dvc metrics show`` reads it).

Example:
    python -m vlv.stages.tables coco --profile toy --dataset "Shapes eval split (200 images)" \
        --fid results/evaluate/fid/*.json --caption-metrics results/evaluate/caption_metrics/*.json \
        --out results/tables/coco.csv
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from vlv.manifest import build_manifest, write_manifest

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
        row["metric"] = f"{fid['metric']} on {fid['features']}" if "features" in fid else fid["metric"]
        row.update({f"{fid['metric']} cfg{g}": round(v, 4) for g, v in fid["guidance"].items()})
        row.update({k: ("not computed" if m.get(k) is None else round(m[k], 4)) for k in CAPTION_METRICS})
        row["implementation"] = m["implementation"]
        rows.append(row)
    return rows


SPATIAL_COLUMNS = {
    "colour_shape_recall": "objects found (colour+shape)",
    "cell_accuracy_of_matched": "right cell (of found)",
    "size_accuracy_of_matched": "right size (of found)",
    "mean_center_error_px": "mean centre error (px)",
    "mean_scale_error": "mean scale error (share of image side)",
    "mean_scale_bias": "mean scale bias (drawn minus true, share of image side)",
}


def spatial_rows(metrics_file: str, profile: str, dataset: str) -> list[dict]:
    m = json.loads(Path(metrics_file).read_text())
    if "detector" not in m:
        raise SystemExit(f"{metrics_file} has no detector scores (the spatial table needs the toy profile's detector)")
    rows = []
    for name, d in m["detector"].items():
        kind, _, guidance = name.partition(" cfg")
        source = {"recon": "VLV reconstruction", "caption": "decoder from true caption (bound)"}.get(
            kind, "decoder from empty caption (floor)"
        )
        row = {"source": source, "guidance": guidance or "1", "dataset": dataset, "profile": profile}
        row["images"] = m["images"]
        row.update({label: None if d.get(k) is None else round(d[k], 4) for k, label in SPATIAL_COLUMNS.items()})
        row["implementation"] = "Shapes detector (colour segmentation) against the scene graph"
        rows.append(row)
    return rows


def arena_rows(files: list[str], profile: str, dataset: str) -> list[dict]:
    rows = []
    for f in files:
        a = json.loads(Path(f).read_text())
        row = {"captioner": _name(f), "dataset": dataset, "profile": profile, "captions": a["captions"]}
        row["mean rating (0-6)"] = round(a["mean_rating"], 3)
        row.update(
            {f"share rated {level}": round(n / max(1, a["captions"]), 3) for level, n in a["distribution"].items()}
        )
        row["judge"] = a["judge"]
        rows.append(row)
    return rows


def vqa_rows(files: list[str], profile: str, dataset: str) -> list[dict]:
    rows = []
    for f in files:
        v = json.loads(Path(f).read_text())
        for shots, r in v["shots"].items():
            row = {"captioner": _name(f), "dataset": v.get("dataset", dataset), "profile": profile}
            row["questions"] = v["questions"]
            row["shots"] = int(shots)
            row["accuracy"] = round(r["accuracy"], 4)
            row.update({f"accuracy ({kind})": round(a, 4) for kind, a in r["by_kind"].items()})
            row["answered unknown"] = round(r["unknown_share"], 4)
            row["reader"], row["metric"] = v["reader"], v["metric"]
            rows.append(row)
    return rows


SEED_GUIDANCE = 2.0  # the caption -> image distance the seeds table reports (README's headline)


def _stage1_seed(encoder: str) -> int:
    return json.loads((Path(encoder) / "manifest.json").read_text())["seed"]


def seeds_rows(reconstruct: list[str], finetune: list[str], fid: list[str], arena: list[str], vqa: list[str],
               judge_file: str | None, profile: str, dataset: str) -> list[dict]:  # fmt: skip
    """One row per headline figure, its value for each seed, their mean and spread (sample standard
    deviation). Each value's seed is read from the manifests (the stage-1 encoder's for a
    reconstruction; the captioner's, and for VLV its encoder's too, which must agree), not from names."""
    if not len(finetune) == len(fid) == len(arena) == len(vqa):
        raise SystemExit("--finetune, --fid, --arena and --vqa must list the same captioners")
    judge = json.loads(Path(judge_file).read_text()) if judge_file else {}
    values: dict[str, dict[int, float]] = {}

    def put(measure: str, seed: int, value: float) -> None:
        if seed in values.setdefault(measure, {}):
            raise SystemExit(f"two runs of seed {seed} for {measure!r}: the runs must have different seeds")
        values[measure][seed] = value

    for metrics_file in reconstruct:
        seed = _stage1_seed(_manifest_of(metrics_file)["encoder"])
        recon = {k: v for k, v in json.loads(Path(metrics_file).read_text()).get("detector", {}).items()
                 if k.startswith("recon cfg")}  # fmt: skip
        if recon:
            top = max(recon, key=lambda k: float(k.removeprefix("recon cfg")))
            at, scores = top.removeprefix("recon "), recon[top]
            put(f"reconstruction colour+shape ({at})", seed, scores["colour_shape_recall"])
            put(f"reconstruction size right of found ({at})", seed, scores["size_accuracy_of_matched"])
            counts = [c for c in scores.get("by_objects", {}) if c != "all"]
            if counts:  # the hardest scenes: shape right of the objects whose colour was drawn
                most = max(counts, key=int)
                put(f"reconstruction shape right of drawn colours, {most}-object scenes ({at})", seed,
                    scores["by_objects"][most]["shape_right_of_drawn_colours"])  # fmt: skip
    for folder, f, a, v in zip(finetune, fid, arena, vqa):
        name, man = Path(folder).name, json.loads((Path(folder) / "manifest.json").read_text())
        if not name == _name(f) == _name(a) == _name(v):
            raise SystemExit(f"--finetune {folder}, --fid {f}, --arena {a} and --vqa {v} are different captioners")
        seed, label = man["seed"], {"vlv": "VLV", "direct": "direct"}.get(man["init"], man["init"])
        if man["init"] == "vlv" and _stage1_seed(man["encoder"]) != seed:
            raise SystemExit(f"{folder}: stage 2 has seed {seed} but its encoder {man['encoder']} another")
        if name in judge:
            put(f"{label} object coverage", seed, judge[name]["coverage"])
            put(f"{label} hallucinated per caption", seed, judge[name]["hallucinated_per_caption"])
        put(f"{label} arena rating (0-6)", seed, json.loads(Path(a).read_text())["mean_rating"])
        shots = json.loads(Path(v).read_text())["shots"]
        put(f"{label} VQA accuracy ({min(shots, key=int)}-shot)", seed, shots[min(shots, key=int)]["accuracy"])
        distance = json.loads(Path(f).read_text())
        put(f"{label} caption -> image {distance['metric']} cfg{SEED_GUIDANCE:g}", seed,
            distance["guidance"][f"{SEED_GUIDANCE:g}"])  # fmt: skip
    rows = []
    for measure, by_seed in values.items():
        xs = [by_seed[s] for s in sorted(by_seed)]
        mean = sum(xs) / len(xs)
        sd = (sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else None
        row = {"measure": measure, "seeds": len(xs), **{f"seed {s}": round(by_seed[s], 4) for s in sorted(by_seed)}}
        row.update({"mean": round(mean, 4), "sd": None if sd is None else round(sd, 4)})
        rows.append({**row, "dataset": dataset, "profile": profile})
    return rows


def _manifest_of(path: str) -> dict:
    """The manifest beside an artefact file (``x.json`` -> ``x.manifest.json``, or ``manifest.json`` in its folder)."""
    f = Path(path)
    for m in (f.with_suffix(".manifest.json"), f.parent / "manifest.json"):
        if m.exists():
            return json.loads(m.read_text())
    return {}


def _distances(fid_file: str, prefix: str) -> tuple[str, dict]:
    fid = json.loads(Path(fid_file).read_text())
    return fid["metric"], {f"{prefix}{fid['metric']} cfg{g}": round(v, 4) for g, v in fid["guidance"].items()}


def reconstruction_rows(
    ablation: str, key: str, fid_files: list[str], metric_files: list[str], profile: str, dataset: str
) -> list[dict]:
    """One row per stage-1 variant: the setting ``key`` of its stage-1 config (num_queries,
    data_percent), the Fréchet distance of its reconstructions at each guidance and, on the toy
    profile, the share of objects the detector finds in them."""
    rows = []
    for fid_file, metrics_file in zip(fid_files, metric_files):
        cfg = _manifest_of(metrics_file).get("config", {})
        metric, dist = _distances(fid_file, "reconstruction ")
        row = {
            "ablation": ablation,
            "setting": f"{key}={cfg.get(key)}",
            "artefact": f"distill_stage1/{Path(metrics_file).parent.name}",
        }
        row.update({"dataset": dataset, "profile": profile, **dist})
        detector = json.loads(Path(metrics_file).read_text()).get("detector", {})
        for name, scores in detector.items():
            if name.startswith("recon cfg"):
                row[f"objects found {name.removeprefix('recon ')}"] = round(scores["colour_shape_recall"], 4)
        rows.append(row)
    return rows


def captioner_rows(
    ablation: str, fid_files: list[str], finetune_dirs: list[str], judge_file: str | None, profile: str,
    dataset: str, label,
) -> list[dict]:  # fmt: skip
    """One row per trained captioner (its evaluate_fid JSON and finetune_stage2 folder):
    ``label(finetune manifest)`` as the setting, the caption -> image distance at each guidance and,
    with the Shapes judge, coverage and hallucinations."""
    if len(fid_files) != len(finetune_dirs):
        raise SystemExit("--fid and --finetune must list the same captioners")
    judge = json.loads(Path(judge_file).read_text()) if judge_file else {}
    rows = []
    for f, folder in zip(fid_files, finetune_dirs):
        name = _name(f)
        if Path(folder).name != name:
            raise SystemExit(f"--fid {f} and --finetune {folder} are different captioners")
        man = json.loads((Path(folder) / "manifest.json").read_text())
        metric, dist = _distances(f, "caption -> image ")
        row = {"ablation": ablation, "setting": label(man), "artefact": name}
        row.update({"dataset": dataset, "profile": profile, **dist})
        if name in judge:
            row["object coverage"] = round(judge[name]["coverage"], 4)
            row["hallucinated per caption"] = round(judge[name]["hallucinated_per_caption"], 4)
        rows.append(row)
    return rows


def _trainable_label(man: dict) -> str:
    return f"{man['config']['trainable']} ({man['trainable_parameters']:,} trainable parameters)"


def _llm_label(man: dict) -> str:
    size = man.get("llm_parameters")
    return f"{man['llm']}" + (f" ({size:,} parameters)" if size else "")


def _init_label(man: dict) -> str:
    return "with stage 1 (VLV)" if man["init"] == "vlv" else "without stage 1 (encoder before distillation)"


def plot_ablation_rows(rows: list[dict], png: str | Path, title: str) -> None:
    """One panel per ablation: each variant's distance against guidance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r["ablation"] for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.4), dpi=120, squeeze=False)
    for ax, group in zip(axes[0], groups):
        ylabel = "distance"
        for r in (r for r in rows if r["ablation"] == group):
            cols = [c for c in r if " cfg" in c and not c.startswith("objects")]
            gs = [float(c.rsplit("cfg", 1)[1]) for c in cols]
            ax.plot(gs, [r[c] for c in cols], marker="o", label=r["setting"][:48])
            ylabel = cols[0].rsplit(" cfg", 1)[0] if cols else ylabel
        ax.set_title(group, fontsize=9)
        ax.set_xlabel("guidance scale")
        ax.set_ylabel(f"{ylabel} (lower is better)", fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def distance_vs_guidance(fid_files: list[str]) -> tuple[str, dict[str, dict[float, float]]]:
    """The metric's name and, per captioner, guidance -> caption -> image distance."""
    metric, curves = "distance", {}
    for f in fid_files:
        fid = json.loads(Path(f).read_text())
        metric = fid["metric"]
        curves[_name(f)] = {float(g): v for g, v in fid["guidance"].items()}
    return metric, curves


def write_distance_vs_guidance(fid_files: list[str], png: str | Path) -> None:
    """The figure (one line per captioner: the paper's U shape) and its data as a CSV beside it
    (``guidance`` then one column per captioner; ``dvc plots`` reads it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, curves = distance_vs_guidance(fid_files)
    guidance = sorted({g for c in curves.values() for g in c})
    with Path(png).with_suffix(".csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["guidance", *curves])
        w.writerows([[g, *(round(c[g], 4) if g in c else "" for c in curves.values())] for g in guidance])
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    for name, c in curves.items():
        gs = sorted(c)
        ax.plot(gs, [c[g] for g in gs], marker="o", label=name)
    ax.set_xlabel("guidance scale of the renderer")
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.set_yscale("log")
    ax.set_title(f"caption -> image {metric} against guidance")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def write_table(rows: list[dict], out: str | Path, sources: list[str]) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    # the numbers as hierarchical JSON (DVC metrics): first column -> {numeric column: value}
    key_col = columns[0]
    several = len({r.get("dataset") for r in rows}) > 1  # e.g. VQAv2 and OK-VQA rows of one captioner
    metrics: dict = {}
    for r in rows:
        key = " ".join(str(r[c]) for c in (key_col, "guidance") if c in r)
        if "shots" in r:
            key += f" {r['shots']}-shot"
        if several:
            key = f"{r['dataset']}: {key}"
        metrics[key] = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out.with_suffix(".json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    manifests = [str(Path(s).with_suffix(".manifest.json")) for s in sources]
    write_manifest(
        out.with_suffix(".manifest.json"),
        build_manifest("tables", {"table": out.name}, None, sources=sources, source_manifests=manifests),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table", choices=["coco", "spatial", "arena", "vqa", "ablations", "scaling", "no_stage1", "seeds"])
    p.add_argument("--reconstruction-fid", nargs="+", default=[], help="ablations/scaling: per stage-1 variant")
    p.add_argument("--finetune", nargs="+", default=[], help="ablations/scaling/no_stage1: captioner folders")
    p.add_argument("--judge", default=None, help="ablations/scaling/no_stage1: evaluate_captions_shapes JSON")
    p.add_argument("--arena", nargs="+", default=[], help="arena: evaluate_arena JSON per captioner")
    p.add_argument("--vqa", nargs="+", default=[], help="vqa: evaluate_vqa JSON per captioner")
    p.add_argument("--profile", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--fid", nargs="+", default=[], help="coco: evaluate_fid JSON per captioner")
    p.add_argument("--caption-metrics", nargs="+", default=[], help="coco: evaluate_caption_metrics JSON")
    p.add_argument("--reconstruct", nargs="+", default=[], help="spatial (one) or ablations/scaling: metrics.json")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--figure", default=None, help="coco: PNG of the distance against guidance (its data: the same name, .csv)"
    )
    args = p.parse_args(argv)
    if args.table == "coco":
        rows, sources = (
            coco_rows(args.fid, args.caption_metrics, args.profile, args.dataset),
            args.fid + args.caption_metrics,
        )
        if args.figure:
            write_distance_vs_guidance(args.fid, args.figure)
    elif args.table == "vqa":
        rows, sources = vqa_rows(args.vqa, args.profile, args.dataset), args.vqa
    elif args.table == "arena":
        rows, sources = arena_rows(args.arena, args.profile, args.dataset), args.arena
    elif args.table in ("ablations", "scaling"):
        stage1, stage2 = {
            "ablations": (
                ("learnable queries (Table 4 left)", "num_queries"),
                ("stage-2 trainable set (Table 4 right)", _trainable_label),
            ),
            "scaling": (
                ("stage-1 data (Table 5 left)", "data_percent"),
                ("LM decoder size (Table 5 right)", _llm_label),
            ),
        }[args.table]
        if len(args.reconstruction_fid) != len(args.reconstruct):
            raise SystemExit("--reconstruction-fid and --reconstruct must list the same stage-1 variants")
        rows = reconstruction_rows(*stage1, args.reconstruction_fid, args.reconstruct, args.profile, args.dataset)
        rows += captioner_rows(stage2[0], args.fid, args.finetune, args.judge, args.profile, args.dataset, stage2[1])
        sources = args.reconstruction_fid + args.reconstruct + args.fid + ([args.judge] if args.judge else [])
        if args.figure:
            plot_ablation_rows(rows, args.figure, f"{args.table}: lower is better")
    elif args.table == "seeds":
        rows = seeds_rows(args.reconstruct, args.finetune, args.fid, args.arena, args.vqa, args.judge,
                          args.profile, args.dataset)  # fmt: skip
        sources = args.reconstruct + args.fid + args.arena + args.vqa + ([args.judge] if args.judge else [])
    elif args.table == "no_stage1":
        rows = captioner_rows(
            "skip stage 1 (Table 7)", args.fid, args.finetune, args.judge, args.profile, args.dataset, _init_label
        )
        sources = args.fid + ([args.judge] if args.judge else [])
    else:
        if len(args.reconstruct) != 1:
            raise SystemExit("the spatial table needs one --reconstruct")
        rows, sources = spatial_rows(args.reconstruct[0], args.profile, args.dataset), args.reconstruct
    write_table(rows, args.out, sources)
    print(f"{args.out}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
