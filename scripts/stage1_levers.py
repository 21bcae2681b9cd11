"""Issue 23's levers measured: stage 1 trained with each named variant, then its reconstructions scored.

Each variant is the config's stage 1 with a few values changed (VARIANTS below). For each: train
(`distill_stage1`), reconstruct the evaluation split (`reconstruct`), and record colour+shape found at
guidance 3, the share of the floor-to-bound gap closed, shape right of drawn colours by object count,
size right, the held-out denoising loss's share of the empty-to-caption gap closed (mean over
`stage1.eval_timesteps`), and stage 1's seconds. An existing reconstruct folder can be scored beside
them (`--score NAME=DIR`, e.g. the default's from the main run). Writes the JSON after every run (with
the machine, date and revision) and prints a table. About 35 minutes per variant on 2 CPU cores (toy).

    HF_HUB_OFFLINE=1 python scripts/stage1_levers.py --variants variance low_noise_tilt \\
        --score default=results/reconstruct/encoder --out results/figures/stage1_levers_cpu.json
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vlv.config import load_config, stage_params
from vlv.data.shards import iter_shard, load_images
from vlv.manifest import build_manifest
from vlv.shapes.world import Scene, WorldSpec
from vlv.stages.diagnose_stage1 import shape_scores

VARIANTS = {
    "default": {},
    # lower-variance gradients at no extra compute: stratified timesteps, antithetic noise pairs, EMA
    "variance": {"timestep_sampling": "stratified", "antithetic_noise": True, "ema_decay": 0.995},
    # timesteps leaning to low and mid noise (median t 378 of 1000), where the diagnosis finds the
    # shape signal and the encoder closing the least of its gap
    "low_noise_tilt": {"timestep_sampling": "logit_normal", "logit_normal": [-0.5, 1.0]},
    "ema": {"ema_decay": 0.995},
    # the loss weighted toward the clean latents' edges, where shapes differ
    "edges": {"edge_weight": 4.0},
    "edges8": {"edge_weight": 8.0},
    "stratified_antithetic": {"timestep_sampling": "stratified", "antithetic_noise": True},
}


def score(recon: Path, eval_dir: str, spec: WorldSpec, guidance: float = 3.0) -> dict:
    metrics = json.loads((recon / "metrics.json").read_text())
    det = metrics["detector"][f"recon cfg{guidance:g}"]
    keys, _, metas = load_images(eval_dir)
    scenes = dict(zip(keys, (Scene.from_json(m["scene"]) for m in metas), strict=True))
    suffix = f"-cfg{guidance:g}".replace(".", "p")
    renders = {k[: -len(suffix)]: np.asarray(Image.open(io.BytesIO(p["png"])).convert("RGB"))
               for k, p in iter_shard(recon / "reconstructions.tar") if k.endswith(suffix)}  # fmt: skip
    chosen = [k for k in keys if k in renders]
    by_count = shape_scores([scenes[k] for k in chosen], np.stack([renders[k] for k in chosen]), spec)
    closed = [v for v in metrics["denoising_loss"]["share_of_empty_to_caption_gap_closed"].values() if v is not None]
    return {
        "colour_shape_found": round(det["colour_shape_recall"], 4),
        "share_of_floor_to_bound": round(det["share_of_floor_to_bound_closed"], 4),
        "size_right_of_matched": round(det["size_accuracy_of_matched"], 4),
        "cell_right_of_matched": round(det["cell_accuracy_of_matched"], 4),
        "shape_right_of_drawn_colours": {k: v["shape_right_of_drawn_colours"] for k, v in by_count.items()},
        "denoising_gap_closed": round(float(np.mean(closed)), 4),
        "images": metrics["images"],
        "refine": metrics.get("refine"),  # (the loss above is then on the images it was refined on)
    }


def run_variant(cfg: dict, name: str, overrides: dict, work: Path, a) -> dict:
    params = {**stage_params(cfg, "reconstruct"), **overrides}
    enc, recon = work / name / "encoder", work / name / "reconstruct"
    py = [sys.executable, "-m"]
    t0 = time.time()
    subprocess.run([*py, "vlv.stages.distill_stage1", "--params", json.dumps(params), "--images", a.pool,
                    "--subset", a.subset, "--vision", cfg["models"]["vision_encoder"], "--decoder", cfg["models"]["t2i"],
                    "--out", str(enc), "--work", str(work / name / "ckpt"), "--cpu"], check=True)  # fmt: skip
    seconds = time.time() - t0
    subprocess.run([*py, "vlv.stages.reconstruct", "--params", json.dumps(params), "--encoder", str(enc),
                    "--decoder", cfg["models"]["t2i"], "--images", a.eval, "--shapes", json.dumps(cfg["shapes"]),
                    "--out", str(recon), "--device", "cpu"], check=True)  # fmt: skip
    manifest = json.loads((enc / "manifest.json").read_text())
    return {"overrides": overrides, "stage1_seconds": manifest["train_seconds_this_run"],
            "wall_seconds": round(seconds, 1), "encoder": str(enc)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", default=["config.yaml"])
    p.add_argument("--variants", nargs="*", default=[], choices=list(VARIANTS))
    p.add_argument("--score", nargs="*", default=[], help="NAME=RECONSTRUCT_DIR: an existing run scored beside")
    p.add_argument("--pool", default="results/generate_shapes/pool")
    p.add_argument("--subset", default="results/subset/subset.json")
    p.add_argument("--eval", default="results/generate_shapes/eval")
    p.add_argument("--work", default="work/stage1_levers")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    cfg = load_config(*a.config)
    spec = WorldSpec.from_config(cfg["shapes"])
    record = {"machine": build_manifest("stage1_levers", {}, None)["run"], "runs": {}}
    for item in a.score:  # an earlier run: its overrides by name, its stage-1 seconds from its encoder's manifest
        name, folder = item.split("=", 1)
        encoder = Path(json.loads((Path(folder) / "manifest.json").read_text())["encoder"])
        seconds = json.loads((encoder / "manifest.json").read_text())["train_seconds_this_run"]
        record["runs"][name] = {"overrides": VARIANTS.get(name), "stage1_seconds": seconds, "reconstruct": folder,
                                **score(Path(folder), a.eval, spec)}  # fmt: skip
    for name in a.variants:
        info = run_variant(cfg, name, VARIANTS[name], Path(a.work), a)
        record["runs"][name] = {**info, **score(Path(a.work) / name / "reconstruct", a.eval, spec)}
        Path(a.out).write_text(json.dumps(record, indent=2) + "\n")
    Path(a.out).write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"{'run':22s} {'c+s cfg3':>8s} {'floor>bound':>11s} {'shape 1/2/3 obj':>18s} {'size':>6s} {'gap':>6s} {'s1 s':>7s}"
    )
    for name, r in record["runs"].items():
        sh = r["shape_right_of_drawn_colours"]
        shapes = "/".join(f"{sh.get(k, float('nan')):.0%}" for k in ("1", "2", "3"))
        print(f"{name:22s} {r['colour_shape_found']:8.1%} {r['share_of_floor_to_bound']:11.1%} {shapes:>18s} "
              f"{r['size_right_of_matched']:6.1%} {r['denoising_gap_closed']:6.1%} {r.get('stage1_seconds', '-')!s:>7s}")  # fmt: skip


if __name__ == "__main__":
    main()
