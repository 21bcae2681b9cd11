"""Record the toy profile's headline results and run times in one committed file, with the machine,
date and revision that produced them: `results/figures/toy_results.json`. The README's tables
quote it (a test checks every number they show against it).

After `dvc repro` (or `snakemake --cores 2 all`) of a clean checkout:
    python scripts/record_toy_results.py results              # headline numbers + per-rule times
    python scripts/record_toy_results.py --timing all=1091     # a whole run's wall time, in seconds
    python scripts/record_toy_results.py --timing tests=455    # the README's test command
    python scripts/record_toy_results.py --data-efficiency results   # after the data_efficiency target
    python scripts/record_toy_results.py --seeds "refine 10=results" --source "snakemake seeds"
                                             # after the seeds target: its table, under that name (a
                                             # setting compared, e.g. "refine 0" run with an overlay),
                                             # and the run's job times (RESULTS/../benchmarks)
    python scripts/record_toy_results.py --compare-seeds "refine 0" "refine 10"
                                             # two recorded seeds runs side by side (docs/experiments.md)

Each call updates only what it is given; everything it writes carries its own machine, date and
revision, so numbers measured at different times never pass for one run.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "figures" / "toy_results.json"


def provenance(repo: Path = ROOT) -> dict:
    cpu = "unknown"
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    # the run itself rewrites dvc.lock: any other change to tracked files makes the revision "-dirty"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock"], cwd=repo, capture_output=True
    )
    return {
        "machine": {
            "cpu": cpu,
            "avx512": " avx512f" in flags,
            "cores": os.cpu_count(),
            "system": platform.platform(),
        },
        "date": datetime.date.today().isoformat(),
        "revision": rev + ("-dirty" if dirty.stdout.strip() else ""),
    }


def headline(results: Path) -> dict:
    """The numbers of the README's results table, read from the run's own outputs."""
    recon = json.loads((results / "reconstruct/encoder/metrics.json").read_text())["detector"]
    judge = json.loads((results / "evaluate/captions_shapes_main.json").read_text())
    arena = json.loads((results / "tables/arena.json").read_text())
    vqa = json.loads((results / "tables/vqa.json").read_text())
    coco = json.loads((results / "tables/coco.json").read_text())
    out: dict = {
        "stage1_reconstructions": {
            g: {
                "colour_shape_recall": recon[f"recon cfg{g}"]["colour_shape_recall"],
                "colour_recall": recon[f"recon cfg{g}"]["colour_recall"],
                "cell_accuracy_of_matched": recon[f"recon cfg{g}"]["cell_accuracy_of_matched"],
                "size_accuracy_of_matched": recon[f"recon cfg{g}"]["size_accuracy_of_matched"],
                "shape_right_3_objects": recon[f"recon cfg{g}"]
                .get("by_objects", {})
                .get("3", {})
                .get("shape_right_of_drawn_colours"),
                "share_of_floor_to_bound_closed": recon[f"recon cfg{g}"].get("share_of_floor_to_bound_closed"),
                "bound_colour_shape_recall": recon[f"caption cfg{g}"]["colour_shape_recall"],
            }
            for g in ("1", "2", "3")
            if f"recon cfg{g}" in recon
        },
        "floor_colour_shape_recall": next(v["colour_shape_recall"] for k, v in recon.items() if k.startswith("empty")),
        "captioners": {},
    }
    for name, s in judge.items():
        row = {
            "coverage": s["coverage"],
            "hallucinated_per_caption": s["hallucinated_per_caption"],
            "arena_mean_rating": arena[name]["mean rating (0-6)"],
            "vqa_accuracy": vqa[f"{name} 0-shot"]["accuracy"],
        }
        row.update({k.split()[-1]: v for k, v in coco[name].items() if k.startswith("FD-toyCLIP cfg")})
        row["judge"] = s  # the Shapes judge's whole summary: size, position, relations, counts, exact
        out["captioners"][name] = row
    out["evaluation_images"] = next(iter(coco.values()))["images"]
    return out


def all_tables(results: Path) -> dict:
    """Every table the run wrote (``tables/*.csv``), row by row, numbers as numbers: what the docs'
    detailed tables cite."""

    def value(v: str):
        try:
            return float(v)
        except ValueError:
            return v

    out = {}
    for path in sorted((results / "tables").glob("*.csv")):
        with path.open() as f:
            out[path.stem] = [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return out


def data_efficiency(results: Path) -> dict:
    """VLV against the direct captioner at each share of the pairs (the `data_efficiency` target):
    the judge's scores, and each captioner's training compute (steps x batch and seconds; VLV's stage
    1 beside its stage 2) from the manifests, and its jobs' seconds from RESULTS/../benchmarks."""
    judge = json.loads((results / "evaluate/captions_shapes_data_efficiency.json").read_text())
    stage1 = json.loads((results / "distill_stage1/encoder/manifest.json").read_text())
    benchmarks = results.resolve().parent / "benchmarks"
    jobs = rule_seconds(benchmarks) if benchmarks.is_dir() else {}
    out = {
        "stage1": {
            "images_seen": stage1["config"]["steps"] * stage1["config"]["batch_size"],
            "train_seconds": stage1["train_seconds_this_run"],
        },
        "captioners": {},
    }
    for name, s in judge.items():
        m = json.loads((results / "finetune_stage2" / name / "manifest.json").read_text())
        out["captioners"][name] = {
            "init": m["init"],
            "pairs_trained_on": m["pairs"],
            "validation_pairs": (m.get("validation") or {}).get("pairs", 0),
            "chosen_step": (m.get("validation") or {}).get("chosen_step"),
            "steps": m["config"]["steps"],
            "captions_seen": m["config"]["steps"] * m["config"]["batch_size"],
            "train_seconds": m["train_seconds_this_run"],
            # the whole jobs' wall seconds (Snakemake's benchmarks; refining embeddings included)
            "stage2_job_seconds": jobs.get(f"finetune_stage2/{name}"),
            "caption_job_seconds": jobs.get(f"caption/{name}"),
            "trainable_parameters": m["trainable_parameters"],
            "coverage": s["coverage"],
            "hallucinated_per_caption": s["hallucinated_per_caption"],
            "size_position_accuracy": s["attribute_accuracy"],  # size and position both right, of covered
        }
    return out


def seeds_table(results: Path) -> dict:
    """The seeds target's table (``tables/seeds.csv``): each headline measure per seed, its mean and
    sample standard deviation, keyed by measure."""
    return {row.pop("measure"): row for row in all_tables(results)["seeds"]}


def rule_seconds(benchmarks: Path) -> dict:
    """Wall seconds of each job, from Snakemake's benchmark files (rule/wildcards -> s)."""
    out = {}
    for tsv in sorted(benchmarks.rglob("*.tsv")):
        with tsv.open() as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        out[str(tsv.relative_to(benchmarks).with_suffix(""))] = round(float(row["s"]), 1)
    return out


LABELS = {
    "teacher": "teacher (Shapes oracle)",
    "reference": "reference captions (short, COCO-style)",
    "vlv_pairs100": "**VLV** (4 000 pairs)",
    "direct_pairs100": "direct captioner (4 000 pairs, no stage 1)",
    "no_stage1_pairs100": "no stage 1 (Table 7)",
}
# the captioners the seeds target reruns, and the label its table gives their measures
SEEDED = {"vlv_pairs100": "VLV", "direct_pairs100": "direct"}
SEEDS_DEFAULT = "refine 10"  # the seeds record the README quotes: the default config's
PAPER_METHOD = "refine 0"  # and beside it, where recorded: the paper's method (no refinement)


def pct(x: float | None) -> str:
    return "none" if x is None else f"{100 * x:.1f} %"


def spread(row: dict | None, single: float | None, as_pct: bool, digits: int = 2) -> str:
    """A seeds row as "mean ± sd", or the single run's value when there is no seeds row."""
    if row is None and single is None:
        return "not measured"
    if row is None:
        return pct(single) if as_pct else f"{single:.{digits}f}"
    if as_pct:
        return f"{100 * row['mean']:.1f} ± {100 * row['sd']:.1f} %"
    return f"{row['mean']:.{digits}f} ± {row['sd']:.{digits}f}"


def seed_job_seconds(seconds: dict, seeds: list[str], main_seed: int = 0) -> dict:
    """From a seeds run's job times: stage 1, VLV's stage 2 and the reconstructions, per seed."""
    from vlv.variants import seed_captioner, seed_stage1

    out = {}
    for seed in seeds:
        n = int(seed.split()[-1])
        s1, vlv = seed_stage1(n, main_seed), seed_captioner("vlv", n, main_seed)
        jobs = {"distill_stage1": f"distill_stage1/{s1}", "VLV stage 2": f"finetune_stage2/{vlv}",
                "reconstruct": f"reconstruct/{s1}"}  # fmt: skip
        out[seed] = {label: seconds.get(job) for label, job in jobs.items()}
    return out


def is_measure(row) -> bool:
    """A seeds record's entry is a measure's row (not its provenance or job times)."""
    return isinstance(row, dict) and "mean" in row


def is_share(measure: str) -> bool:
    """The seeds table's measure is a share, shown as a percentage (not a count, rating or distance)."""
    return not any(w in measure for w in ("hallucinated", "arena", "FD"))


def compare_seeds(record: dict, a: str, b: str) -> dict:
    """Two recorded seeds runs side by side: per measure B - A for each seed (paired when the two runs
    share their stage-1 encoders), and each run's job times per seed."""
    ra, rb = record["seeds"][a], record["seeds"][b]
    seeds = sorted(k for k in next(v for v in ra.values() if is_measure(v)) if k.startswith("seed "))
    return {
        "runs": [a, b],
        "seeds": seeds,
        "difference": {
            m: {k: round(rb[m][k] - r[k], 6) for k in seeds} for m, r in ra.items() if is_measure(r) and m in rb
        },  # fmt: skip
        "job_seconds": {n: seed_job_seconds(r.get("rule_seconds", {}), seeds) for n, r in ((a, ra), (b, rb))},
    }


def comparison_markdown(record: dict, c: dict) -> str:
    """The comparison's two tables (docs/experiments.md): mean ± sd of each run and B - A per seed of
    each measure that differs, then the job times."""
    (a, b), seeds = c["runs"], c["seeds"]
    src = "<!-- source: results/figures/toy_results.json -->"
    out = [src, f"| measure | {a} | {b} | {b} minus {a}, " + " / ".join(seeds) + " |", "|---|---|---|---|"]
    for measure, diff in c["difference"].items():
        if not any(diff.values()):
            continue  # the same jobs in both runs (e.g. the direct captioner, which does not refine)
        as_pct = is_share(measure)
        shown = " / ".join(f"{100 * diff[k]:+.1f}" if as_pct else f"{diff[k]:+.2f}" for k in seeds)
        ra, rb = record["seeds"][a][measure], record["seeds"][b][measure]
        out.append(f"| {measure} | {spread(ra, None, as_pct)} | {spread(rb, None, as_pct)} | {shown} |")
    out += ["", src, "| job, s | " + " | ".join(f"{n}, {s}" for n in (a, b) for s in seeds) + " |",
            "|---|" + "---|" * (2 * len(seeds))]  # fmt: skip
    for job in ("distill_stage1", "VLV stage 2", "reconstruct"):
        cells = [c["job_seconds"][n][s][job] for n in (a, b) for s in seeds]
        out.append(f"| {job} | " + " | ".join("not recorded" if x is None else f"{x:.1f}" for x in cells) + " |")
    return "\n".join(out)


def markdown(record: dict) -> str:
    """The README's three tables' rows, from the record: the seeded captioners and the reconstructions
    as mean ± sd over the seeds target's runs where it was recorded, the rest from the single run."""
    r, out = record["results"], []
    seeds = record.get("seeds", {}).get(SEEDS_DEFAULT, {})
    paper = record.get("seeds", {}).get(PAPER_METHOD)
    for name, label in LABELS.items():
        if name not in r["captioners"]:
            continue
        c, who = r["captioners"][name], SEEDED.get(name, "")
        measure = {m: seeds.get(f"{who} {m}") if who else None for m in (
            "object coverage", "hallucinated per caption", "arena rating (0-6)", "VQA accuracy (0-shot)",
            "caption -> image FD-toyCLIP cfg2")}  # fmt: skip
        out.append(
            f"| {label} | {spread(measure['object coverage'], c['coverage'], True)} | "
            f"{spread(measure['hallucinated per caption'], c['hallucinated_per_caption'], False)} | "
            f"{spread(measure['arena rating (0-6)'], c['arena_mean_rating'], False)} | "
            f"{spread(measure['VQA accuracy (0-shot)'], c['vqa_accuracy'], True)} | "
            f"{spread(measure['caption -> image FD-toyCLIP cfg2'], c['cfg2'], False)} |"
        )
        if name == "vlv_pairs100" and paper:
            cells = [spread(paper[f"VLV {m}"], None, as_pct) for m, as_pct in (
                ("object coverage", True), ("hallucinated per caption", False), ("arena rating (0-6)", False),
                ("VQA accuracy (0-shot)", True), ("caption -> image FD-toyCLIP cfg2", False))]  # fmt: skip
            out.append("| VLV, embeddings not refined (the paper's method) | " + " | ".join(cells) + " |")
    out.append("")
    top = max(r["stage1_reconstructions"], key=float)  # the highest guidance (toy: 3)
    g, at = r["stage1_reconstructions"][top], f"cfg{top}"
    shape3 = next((v for k, v in seeds.items() if k.startswith("reconstruction shape right of drawn colours, 3")), None)
    out.append(
        f"| VLV encoder | {spread(seeds.get(f'reconstruction colour+shape ({at})'), g['colour_shape_recall'], True)} | "
        f"{spread(shape3, g.get('shape_right_3_objects'), True)} | "
        f"{spread(seeds.get(f'reconstruction size right of found ({at})'), g['size_accuracy_of_matched'], True)} | "
        f"{pct(g['colour_recall'])} | {pct(g['cell_accuracy_of_matched'])} | "
        f"{100 * g['share_of_floor_to_bound_closed']:.0f} % |"
    )
    if paper:
        cells = [spread(paper[m], None, True) for m in (f"reconstruction colour+shape ({at})",
                 next(k for k in paper if k.startswith("reconstruction shape right of drawn colours, 3")),
                 f"reconstruction size right of found ({at})")]  # fmt: skip
        out.append("| VLV encoder, not refined (the paper's method) | " + " | ".join(cells) + " | | | |")
    out.append(f"| bound: the decoder drawing the true caption | {pct(g['bound_colour_shape_recall'])} | | | | | |")
    out.append(f"| floor: the empty caption | {pct(r['floor_colour_shape_recall'])} | | | | | |")
    out.append("")
    t, rules = record.get("timings", {}), record.get("rule_seconds", {}).get("seconds", {})
    rows = [
        (
            "`snakemake --cores 2 all` (timed as `dvc repro`)",
            "every table of `all`, from the committed stand-ins",
            t.get("all", {}).get("seconds"),
        ),
        # a whole, uninterrupted stage 1 (--timing distill_stage1=S) where the run resumed its encoder
        (
            "of which `distill_stage1`",
            "the stage-1 encoder",
            t.get("distill_stage1", {}).get("seconds", rules.get("distill_stage1/encoder")),
        ),  # fmt: skip
        ("`pytest -q -n 2` (below)", "the test suite", t.get("tests", {}).get("seconds")),
    ]
    out += [f"| {a} | {b} | {s:.0f} |" for a, b, s in rows if s is not None]
    return "\n".join(out)


DOC_NAMES = {
    "reference": "reference (leave-one-out in the metrics)",
    "teacher": "teacher (oracle)",
    "vlv_pairs100": "**VLV** (4 000 pairs)",
    "direct_pairs100": "direct captioner (4 000 pairs)",
    "no_stage1_pairs100": "no stage 1",
}


def docs_markdown(record: dict) -> str:
    """docs/results.md's tables of the single run, from the record's ``tables`` and ``results``."""
    t, caps, out = record["tables"], record["results"]["captioners"], []
    src = "<!-- source: results/figures/toy_results.json -->"

    def f(x, digits=2):
        return "not computed" if isinstance(x, str) else f"{x:.{digits}f}"

    rows = {(r["source"], f"{float(r['guidance']):g}"): r for r in t["spatial"]}
    gs = sorted({g for kind, g in rows if kind == "VLV reconstruction"}, key=float)
    recon = [rows[("VLV reconstruction", g)] for g in gs]
    bound = [rows[("decoder from true caption (bound)", g)] for g in gs]
    floor = rows[("decoder from empty caption (floor)", "1")]
    out += ["stage 1 (spatial)", src, "| | " + " | ".join(f"guidance {g}" for g in gs)
            + f" | bound (g {' / '.join(gs)}) | floor |", "|---|" + "---|" * (len(gs) + 2)]  # fmt: skip

    def show(x, as_pct: bool, bare: bool = False) -> str:
        if isinstance(x, str):  # an empty cell: nothing matched
            return "none"
        return (f"{100 * x:.1f}" + ("" if bare else " %")) if as_pct else f"{x:.2f}" + ("" if bare else " px")

    for label, key, as_pct in [
        ("colour and shape found", "objects found (colour+shape)", True),
        ("right cell, of those found", "right cell (of found)", True),
        ("right size, of those found", "right size (of found)", True),
        ("mean centre error", "mean centre error (px)", False),
    ]:
        cells = [show(r[key], as_pct) for r in recon]
        bounds = " / ".join(show(r[key], as_pct, bare=True) for r in bound) + (" %" if as_pct else " px")
        out.append(f"| {label} | " + " | ".join(cells) + f" | {bounds} | {show(floor[key], as_pct)} |")
    out += ["", "judge", src, "| captioner | object coverage | hallucinated / caption | size+position right | "
            "relation accuracy | count right | exact caption |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, label in DOC_NAMES.items():
        if name in caps:
            j = caps[name]["judge"]
            rel = "(none stated)" if j.get("relation_accuracy") is None else pct(j["relation_accuracy"])
            out.append(f"| {label} | {pct(j['coverage'])} | {j['hallucinated_per_caption']:.2f} | "
                       f"{pct(j['attribute_accuracy'])} | {rel} | {pct(j['count_accuracy'])} | {pct(j['exact'])} |")  # fmt: skip
    coco = {r["captioner"]: r for r in t["coco"]}
    fds = sorted((k for k in t["coco"][0] if k.startswith("FD-toyCLIP cfg")), key=lambda k: float(k.split("cfg")[1]))
    out += ["", "coco", src, f"| captioner | FD-toyCLIP cfg {' / '.join(k.split('cfg')[1] for k in fds)} | BLEU-4 | "
            "METEOR | ROUGE-L | CIDEr | CLIPScore | RefCLIPScore |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, label in DOC_NAMES.items():
        if name in coco:
            r = coco[name]
            fd = " / ".join(f"{r[k]:.2f}" for k in fds)
            out.append(f"| {label} | {fd} | {f(r['BLEU-4'], 3)} | {f(r['METEOR'], 3)} | {f(r['ROUGE-L'], 3)} | "
                       f"{f(r['CIDEr'])} | {f(r['CLIPScore'])} | {f(r['RefCLIPScore'])} |")  # fmt: skip
    vqa = {r["captioner"]: r for r in t["vqa"]}
    out += ["", "vqa", src, '| captioner | accuracy | count | shape | colour | position | answered "unknown" |',
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, label in DOC_NAMES.items():
        if name in vqa:
            r = vqa[name]
            kinds = " | ".join(pct(r[f"accuracy ({k})"]) for k in ("count", "shape", "colour", "position"))
            out.append(f"| {label} | {pct(r['accuracy'])} | {kinds} | {pct(r['answered unknown'])} |")
    for name, table in record.get("seeds", {}).items():
        seeds = sorted(k for k in next(v for v in table.values() if isinstance(v, dict)) if k.startswith("seed "))
        out += [
            "",
            f"seeds: {name}",
            src,
            f"| measure | mean ± sd | {' | '.join(seeds)} |",
            "|---|" + "---|" * (1 + len(seeds)),
        ]
        for measure, row in table.items():
            if not is_measure(row):
                continue  # provenance
            as_pct = is_share(measure)
            one = pct if as_pct else (lambda x: f"{x:.2f}")
            out.append(f"| {measure} | {spread(row, None, as_pct)} | {' | '.join(one(row[k]) for k in seeds)} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", help="the run's results folder (headline numbers and rule times)")
    p.add_argument("--benchmarks", default="benchmarks", help="the run's Snakemake benchmark folder")
    p.add_argument("--timing", action="append", default=[], metavar="NAME=SECONDS")
    p.add_argument("--data-efficiency", metavar="RESULTS", help="after the data_efficiency target: its figures")
    p.add_argument("--seeds", action="append", default=[], metavar="NAME=RESULTS", help="after the seeds target")
    p.add_argument("--source", default="dvc repro", help="how the run was made (for the record)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--repo", default=str(ROOT), help="the checkout that made the run (its revision is recorded)")
    p.add_argument("--markdown", action="store_true", help="print the README's table rows from the record")
    p.add_argument("--docs-markdown", action="store_true", help="print docs/results.md's tables from the record")
    p.add_argument(
        "--compare-seeds", nargs=2, metavar=("A", "B"), help="record and print two recorded seeds runs side by side"
    )
    args = p.parse_args(argv)
    if args.markdown or args.docs_markdown:
        print((markdown if args.markdown else docs_markdown)(json.loads(Path(args.out).read_text())))
        return 0
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {}
    record["what"] = (
        "The toy profile's headline results (200 evaluation images; one seed, and the seeds target's "
        "mean and spread), its tables and run times on 2 cores; written by scripts/record_toy_results.py, "
        "quoted by the README and docs"
    )
    prov = provenance(Path(args.repo))
    if args.results:
        record["results"] = {**prov, "source": args.source, **headline(Path(args.results))}
        record["tables"] = {**prov, "source": args.source, **all_tables(Path(args.results))}
        record["rule_seconds"] = {**prov, "source": args.source, "seconds": rule_seconds(Path(args.benchmarks))}
    if args.data_efficiency:
        record["data_efficiency"] = {**prov, **data_efficiency(Path(args.data_efficiency))}
    for entry in args.seeds:
        name, _, folder = entry.partition("=")
        runs = {**prov, "source": args.source, **seeds_table(Path(folder))}
        benchmarks = Path(folder).resolve().parent / "benchmarks"
        if benchmarks.is_dir():
            runs["rule_seconds"] = rule_seconds(benchmarks)
        record.setdefault("seeds", {})[name] = runs
    if args.compare_seeds:
        a, b = args.compare_seeds
        record.setdefault("seeds_compared", {})[f"{b} minus {a}"] = compare_seeds(record, a, b)
    for t in args.timing:
        name, _, seconds = t.partition("=")
        record.setdefault("timings", {})[name] = {**prov, "seconds": float(seconds)}
    out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
    if args.compare_seeds:
        print(comparison_markdown(record, record["seeds_compared"][f"{b} minus {a}"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
