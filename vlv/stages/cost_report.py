"""Cost report: measured throughput of each stage and the GPU-hours it projects at the configured scale.

For each stage that ran, the rate comes from its run manifest (items and seconds of the work itself,
not of model loading) and the number of processes it ran on; the configured scale is what the
config asks of that stage (stage 1: steps x batch images; stage 2: steps x batch captions; the
teacher: every pair; evaluation: the evaluation images, rendered at every guidance scale). The
projection is ``items at scale / (items per second per process) / 3600`` device-hours (GPU-hours
when measured on GPUs), and the wall
time on ``launch.<stage>.processes`` GPUs (one for the other stages). The total is set against the
paper's stated budget (under 1,000 GPU-hours). A rate measured on a CPU projects the CPU's time:
the report names the device each figure was measured on, and only a run on the target GPUs (a
short calibration run of the paper profile will do) projects the paper's cost.

Example:
    python -m vlv.stages.cost_report --params '{"budget_gpu_hours": 1000, "scale": {...}}' \
        --manifest distill_stage1=results/distill_stage1/encoder/manifest.json ... --out results/tables/cost.csv
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from vlv.manifest import build_manifest, write_manifest

COLUMNS = [
    "stage", "what", "measured_on", "measured_processes", "measured_items", "measured_seconds",
    "items_per_second_per_process", "items_at_scale", "gpus_at_scale", "projected_device_hours", "projected_wall_hours",
]  # fmt: skip


def measured(stage: str, m: dict) -> tuple[float, float, str]:
    """(items, seconds, what) of one stage's run manifest."""
    if stage == "subset":
        c = m["counts"]
        return c["seen"], m.get("seconds"), "images scored"
    if stage == "distill_stage1":
        return m["images_per_second"] * m["train_seconds_this_run"], m["train_seconds_this_run"], "training images"
    if stage == "finetune_stage2":
        return m["captions_per_second"] * m["train_seconds_this_run"], m["train_seconds_this_run"], "training captions"
    if stage == "synthesize_captions":
        return m["captioned_this_run"], m["seconds_this_run"], "teacher captions"
    if stage == "caption":
        return m["images"], m["seconds"], "evaluation captions"
    if stage == "render_captions":
        return m["images"] * len(m["config"]["renderer_guidance"]), m["seconds"], "evaluation renders"
    raise ValueError(f"no cost model for stage '{stage}'")


def report(manifests: dict[str, dict], cfg: dict) -> tuple[list[dict], dict]:
    rows = []
    for stage, m in manifests.items():
        items, seconds, what = measured(stage, m)
        procs = int(m.get("processes", 1))
        rate = items / seconds / procs if items and seconds else None
        scale = cfg["scale"][stage]
        gpus, at_scale = scale["gpus"], scale["items"] if scale["items"] is not None else round(items)
        hours = at_scale / rate / 3600 if rate else None
        rows.append(
            {
                "stage": stage,
                "what": what,
                "measured_on": m.get("device", "?"),
                "measured_processes": procs,
                "measured_items": round(items),
                "measured_seconds": seconds,
                "items_per_second_per_process": None if rate is None else round(rate, 3),
                "items_at_scale": at_scale,
                "gpus_at_scale": gpus,
                "projected_device_hours": None if hours is None else round(hours, 4),
                "projected_wall_hours": None if hours is None else round(hours / gpus, 4),
            }
        )
    total = sum(r["projected_device_hours"] for r in rows if r["projected_device_hours"] is not None)
    devices = sorted({r["measured_on"] for r in rows})
    on_gpus = all(d.startswith("cuda") for d in devices)
    summary = {
        "projected_device_hours": round(total, 4),
        "measured_on": devices,
        "budget_gpu_hours": cfg["budget_gpu_hours"],
        # only GPU-measured rates project GPU-hours; a CPU run's hours are not comparable to the budget
        "within_budget": total <= cfg["budget_gpu_hours"] if on_gpus else None,
        "stages_not_measured": [r["stage"] for r in rows if r["projected_device_hours"] is None],
    }
    return rows, summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--params", required=True, help="JSON: budget_gpu_hours and scale.<stage>.{items, gpus}")
    p.add_argument("--manifest", nargs="+", required=True, help="STAGE=run manifest JSON")
    p.add_argument("--out", required=True, help="the CSV table; the summary goes beside it as .json")
    args = p.parse_args(argv)
    cfg = json.loads(args.params)
    manifests = {}
    for spec in args.manifest:
        stage, _, path = spec.partition("=")
        manifests[stage] = json.loads(Path(path).read_text())
    rows, summary = report(manifests, cfg)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    write_manifest(
        out.with_suffix(".manifest.json"),
        build_manifest("cost_report", cfg, None, manifests=dict(s.split("=", 1) for s in args.manifest)),
    )
    for r in rows:
        print(f"{r['stage']:20} {r['items_per_second_per_process']} {r['what']}/s per process on {r['measured_on']}"
              f" -> {r['projected_device_hours']} device-hours for {r['items_at_scale']}")  # fmt: skip
    print(f"total {summary['projected_device_hours']} device-hours on {summary['measured_on']}; "
          f"within the paper's {summary['budget_gpu_hours']} GPU-hours: {summary['within_budget']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
