"""Where stage 1's training signal lies, and what its loss can reach (issue 23's diagnosis; toy profile).

Settings: the config's ``diagnose_stage1`` section. On evaluation images stratified by object count (the first ``per_count`` scenes of each count):

(a) **Paired loss gaps.** Fixed (timestep, noise) pairs per image, ``draws`` noise draws at each of
    ``timesteps``, reused for every condition: the encoder's embeddings, the true caption, the true
    caption with its shapes swapped, and the empty caption. The swap permutes the shapes among the
    objects (a wrong binding, the same bag of shapes) where the scene has two different shapes, and
    otherwise replaces each shape by the next of the world's. Reported per timestep (with its log-SNR)
    and object count: the mean over images of L(condition) - L(true caption), its standard error, and
    the standard deviation of one (image, draw) difference, from which the samples needed to resolve
    a gap follow as (sd / gap)^2.
(b) **Free embeddings.** Per image, an embedding optimised by stage 1's own loss alone (``optimise_steps``
    Adam steps at uniform timesteps, ``optimise_draws`` noise draws per image and step), started from the encoder's
    output and from the true caption's (the first also after each of ``optimise_snapshots`` steps:
    how many draws per image the loss needs to carry shape). Their renders at guidance ``guidance``, beside the encoder's,
    the true caption's and the empty caption's (same sampler noise), are scored by the Shapes
    detector: what the loss can reach with an unlimited per-image budget, against what the encoder
    reaches by amortising it.

(c) **Capacity.** The trainable stack of stage 1 (as ``stage1.trainable``, from the same starting
    folder) trained for ``capacity_steps`` steps at stage 1's batch, learning rate and schedule on the
    stage-1 training images, with a linear read-out of each grid cell's shape and size from its
    flattened embeddings, supervised by the scene graphs; scored on the evaluation images: whether the
    stack can carry per-object shape and size in this budget at all, given a direct signal.

Outputs (``--out DIR``): ``signal.json``, ``signal.png`` (the gaps against log-SNR per object count,
and the shape scores of (b)), ``grid.png`` (the renders of (b)), ``manifest.json``.

Example:
    python -m vlv.stages.diagnose_stage1 --params "$(python -m vlv.config reconstruct)" \
        --encoder results/distill_stage1/encoder --decoder models/toy/t2i \
        --images results/generate_shapes/eval --shapes "$(python -m vlv.config shapes)" \
        --vision models/toy/vision --pool results/generate_shapes/pool --subset results/subset/subset.json \
        --options "$(python -m vlv.config diagnose_stage1)" --out results/diagnose_stage1/encoder
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.data.shards import ShardIndex, load_images
from vlv.figures import save_image_grid
from vlv.manifest import build_manifest, write_manifest
from vlv.models.frozen_decoder import FrozenT2IDecoder, encoder_route
from vlv.models.refine import refine
from vlv.models.vlv_encoder import VLVEncoder
from vlv.shapes.captions import short_caption
from vlv.shapes.world import Scene, WorldSpec
from vlv.stages.reconstruct import embed_images, image_latents, sample_all
from vlv.training import pick_device

CONDITIONS = ("encoder", "true_caption", "shapes_swapped", "empty_caption")
SOURCES = ("encoder", "free_from_encoder", "free_from_caption", "true_caption", "empty_caption")


def stratified(scenes: list[Scene], per_count: int) -> list[int]:
    """Indices of the first ``per_count`` scenes of each object count, in split order."""
    taken: dict[int, int] = {}
    chosen = []
    for i, s in enumerate(scenes):
        n = len(s.objects)
        if taken.get(n, 0) < per_count:
            taken[n] = taken.get(n, 0) + 1
            chosen.append(i)
    return chosen


def swap_shapes(scene: Scene, spec: WorldSpec) -> tuple[Scene, str]:
    """The scene with its shapes swapped: rotated among the objects where two of them differ
    ("permuted": every shape still present, bound to another object), else each replaced by the next
    shape of the world ("replaced"). Everything else about the objects stays."""
    shapes = [o.shape for o in scene.objects]
    if len(set(shapes)) > 1:
        new, kind = shapes[1:] + shapes[:1], "permuted"
    else:
        new, kind = [spec.shapes[(spec.shapes.index(s) + 1) % len(spec.shapes)] for s in shapes], "replaced"
    return Scene(scene.id, [replace(o, shape=s) for o, s in zip(scene.objects, new, strict=True)]), kind


def canonical_caption(scene: Scene, seed: int) -> str:
    """A short caption of the scene in the first phrasing, its object order and wording drawn from
    (seed, scene id) only: a scene and its shape-swapped copy get the same words but the shapes."""
    return short_caption(scene, np.random.default_rng([seed, scene.id]), phrasing=0)


def log_snr(dec: FrozenT2IDecoder, timesteps: list[int]) -> list[float]:
    a = dec.noise_scheduler.alphas_cumprod[torch.tensor(timesteps)].double()
    return [round(float(v), 3) for v in torch.log(a / (1 - a))]


@torch.no_grad()
def loss_table(dec, latents, conds: dict, timesteps: list[int], draws: int, seed: int, batch: int = 64) -> dict:
    """Per-sample denoising losses, condition -> (images, timesteps, draws); every condition sees the
    same noise and timestep for a given (image, timestep, draw)."""
    n = len(latents)
    out = {name: np.zeros((n, len(timesteps), draws)) for name in conds}
    for ti, t in enumerate(tqdm(timesteps, desc="paired losses", leave=False)):
        ts = torch.full((n,), t, dtype=torch.long)
        for d in range(draws):
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + t * 1000 + d))
            for name, cond in conds.items():
                for i in range(0, n, batch):
                    b = slice(i, i + batch)
                    out[name][b, ti, d] = dec.diffusion_loss(
                        latents[b], cond[b], noise[b], ts[b], per_sample=True
                    ).cpu()
    return out


def _gap_stats(diff: np.ndarray) -> dict:
    """diff: (images, draws) differences at one timestep -> mean, standard error over images, sd of one."""
    per_image = diff.mean(axis=1)
    n = len(per_image)
    return {
        "gap": round(float(per_image.mean()), 6),
        "se": round(float(per_image.std(ddof=1) / np.sqrt(n)), 6) if n > 1 else None,
        "sd_one_draw": round(float(diff.std(ddof=1)), 6) if diff.size > 1 else None,
        "images": n,
    }


def gap_summary(losses: dict, counts: np.ndarray, timesteps: list[int], snr: list[float]) -> dict:
    """For each condition but the true caption and each stratum ("all", "1", "2", ...): per timestep
    the gap statistics of L(condition) - L(true caption), and their sum over the timesteps."""
    strata = {"all": np.ones(len(counts), bool), **{str(c): counts == c for c in sorted(set(counts.tolist()))}}
    out: dict = {}
    for name, table in losses.items():
        if name == "true_caption":
            continue
        diff = table - losses["true_caption"]
        out[name] = {}
        for stratum, mask in strata.items():
            rows = [{"t": t, "log_snr": s, **_gap_stats(diff[mask, i])} for i, (t, s) in enumerate(zip(timesteps, snr))]
            summed = diff[mask].mean(axis=2).sum(axis=1)
            se = float(summed.std(ddof=1) / np.sqrt(len(summed))) if len(summed) > 1 else None
            out[name][stratum] = {"by_t": rows, "summed": round(float(summed.mean()), 6), "summed_se": se}
    return out


def caption_embeddings(dec: FrozenT2IDecoder, captions: list[str]) -> torch.Tensor:
    """The embeddings ``z`` whose conditioning along the decoder's route is the captions' own text
    encoding: the token embeddings (route text_encoder) or the text model's states before its final
    layer norm (route direct)."""
    te = dec.text_encoder
    ids = dec.tokenizer(
        captions, padding="max_length", max_length=dec.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(te.device)
    with torch.no_grad():
        if dec.route == "text_encoder":
            return te.embeddings.token_embedding(ids)
        return te(ids, output_hidden_states=True).hidden_states[-1]


def shape_scores(scenes: list[Scene], renders: np.ndarray, spec: WorldSpec) -> dict:
    """The detector's scores of the renders per object count and over all (``by_object_count``)."""
    from vlv.shapes.detect import by_object_count, detect, score_scene

    return by_object_count([score_scene(s, detect(im, spec), spec) for s, im in zip(scenes, renders, strict=True)])


def cell_labels(scenes: list[Scene], spec: WorldSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Per grid cell (row-major): the shape's and the size's index + 1, 0 for an empty cell."""
    cells = spec.grid * spec.grid
    shape, size = torch.zeros(len(scenes), cells, dtype=torch.long), torch.zeros(len(scenes), cells, dtype=torch.long)
    sizes = list(spec.sizes)
    for i, s in enumerate(scenes):
        for o in s.objects:
            shape[i, o.row * spec.grid + o.col] = spec.shapes.index(o.shape) + 1
            size[i, o.row * spec.grid + o.col] = sizes.index(o.size) + 1
    return shape, size


class CellReadout(torch.nn.Module):
    """The encoder with a linear read-out of every cell's shape and size from its flattened embeddings."""

    def __init__(self, encoder: VLVEncoder, n_tokens: int, dim: int, spec: WorldSpec):
        super().__init__()
        self.encoder, self.cells = encoder, spec.grid * spec.grid
        self.classes = (len(spec.shapes) + 1, len(spec.sizes) + 1)
        self.shape = torch.nn.Linear(n_tokens * dim, self.cells * self.classes[0])
        self.size = torch.nn.Linear(n_tokens * dim, self.cells * self.classes[1])

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(pixel_values).flatten(1)
        return self.shape(z).view(-1, self.cells, self.classes[0]), self.size(z).view(-1, self.cells, self.classes[1])


def capacity_check(cfg: dict, steps: int, args, spec: WorldSpec, eval_images, eval_scenes, out: Path) -> dict:
    """(c): the trainable stack with a supervised per-cell read-out; its held-out accuracy."""
    from vlv.stages.distill_stage1 import build, training_keys
    from vlv.training import make_accelerator, train

    seed = int(cfg["seed"])
    acc = make_accelerator(args.device == "cpu" or not torch.cuda.is_available(), "fp32")
    torch.manual_seed(seed)
    enc, _ = build({**cfg, "compile": [], "frozen_bf16": False}, args.vision, args.decoder, "cpu")
    _, images, metas = load_images(args.pool, training_keys(args.subset, cfg["data_percent"], seed))
    shape_lbl, size_lbl = cell_labels([Scene.from_json(m["scene"]) for m in metas], spec)
    model = CellReadout(enc, cfg["num_queries"], enc.config["clip_dim"], spec)
    params = {k: cfg[k] for k in ("lr", "betas", "weight_decay", "warmup_steps", "final_lr_ratio", "grad_clip")}
    params.update(steps=steps, log_every=cfg["log_every"], checkpoint_every=cfg["checkpoint_every"])
    ce = torch.nn.functional.cross_entropy

    def step_loss(m, step, batch):
        idx = np.random.default_rng([seed, step]).choice(len(images), cfg["batch_size"], replace=False)
        shape_logits, size_logits = m(enc.preprocess(images[idx]).to(acc.device))
        loss = ce(shape_logits.flatten(0, 1), shape_lbl[idx].flatten().to(acc.device)) + ce(
            size_logits.flatten(0, 1), size_lbl[idx].flatten().to(acc.device)
        )
        acc.backward(loss)
        return loss.detach()

    run = train(acc, model, params, step_loss, stage="capacity_check", work=out / "capacity_work",
                out=out / "capacity", settings={**params, "seed": seed, "keys": len(images)})  # fmt: skip
    run.ckpt.clear()  # (the folder's loss.csv stays)
    trained = acc.unwrap_model(run.model).eval()
    with torch.no_grad():
        logits = [
            trained(enc.preprocess(eval_images[i : i + 64]).to(acc.device)) for i in range(0, len(eval_images), 64)
        ]
    shape_pred = torch.cat([a for a, _ in logits]).argmax(-1).cpu()
    size_pred = torch.cat([b for _, b in logits]).argmax(-1).cpu()
    shape_true, size_true = cell_labels(eval_scenes, spec)
    counts = torch.tensor([len(s.objects) for s in eval_scenes])
    result = {"steps": steps, "training_images": len(images), "seconds": round(run.seconds, 1)}
    for stratum in ["all", *sorted({str(int(c)) for c in counts})]:
        rows = torch.ones(len(counts), dtype=torch.bool) if stratum == "all" else counts == int(stratum)
        occupied = (shape_true > 0) & rows[:, None]
        result[stratum] = {
            "objects": int(occupied.sum()),
            "shape_right": round(float((shape_pred == shape_true)[occupied].float().mean()), 4),
            "size_right": round(float((size_pred == size_true)[occupied].float().mean()), 4),
            "empty_cells_right": round(float((shape_pred == 0)[(shape_true == 0) & rows[:, None]].float().mean()), 4),
        }
    return result


def save_figure(path: Path, gaps: dict, free: dict, capacity: dict | None = None) -> None:
    """Left: one panel per object count, the gap to the true caption against log-SNR for each
    condition (error bars: one standard error). Then shape right of drawn colours per source of
    embeddings (b), beside the supervised read-out's shape right per object (c, hatched); last,
    colour+shape found by the free embeddings against the noise draws per image they took."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strata = [s for s in next(iter(gaps.values())) if s != "all"]
    scores = free.get("scores", {})
    fig, axes = plt.subplots(1, len(strata) + 2, figsize=(3.3 * (len(strata) + 2), 3.0), dpi=110)
    for ax, stratum in zip(axes, strata):
        for name, by in gaps.items():
            rows = by[stratum]["by_t"]
            x, y = [r["log_snr"] for r in rows], [r["gap"] for r in rows]
            ax.errorbar(x, y, yerr=[r["se"] or 0 for r in rows], label=name, marker="o", ms=3, capsize=2)
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_yscale("symlog", linthresh=1e-3)  # the swap's gap is 10-100x the others'
        ax.set_title(f"{stratum}-object scenes", fontsize=8)
        ax.set_xlabel("log-SNR (low = heavy noise)", fontsize=7)
        ax.set_ylabel("L(condition) - L(true caption)", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0].legend(fontsize=6)
    ax = axes[-2]
    bars = {
        source: [by.get(s, {}).get("shape_right_of_drawn_colours", np.nan) for s in strata]
        for source, by in scores.items()
        if "@" not in source
    }
    if capacity:
        bars["read-out (c)"] = [capacity.get(s, {}).get("shape_right", np.nan) for s in strata]
    width = 0.8 / max(len(bars), 1)
    for k, (source, vals) in enumerate(bars.items()):
        ax.bar(
            np.arange(len(strata)) + k * width,
            vals,
            width,
            label=source,
            hatch="//" if source == "read-out (c)" else None,
        )
    ax.set_xticks(np.arange(len(strata)) + 0.4 - width / 2, [f"{s} obj" for s in strata], fontsize=7)
    ax.set_ylabel("shape right, of drawn colours", fontsize=7)
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=5)
    ax = axes[-1]
    if scores:
        per_step = free["draws"]
        steps = [*free["snapshots"], free["steps"]]
        names = [*(f"free_from_encoder@{n}" for n in free["snapshots"]), "free_from_encoder"]
        ax.plot([n * per_step for n in steps], [scores[k]["all"]["colour_shape_found"] for k in names], "o-",
                label="free, from the encoder's output")  # fmt: skip
        for name, style in (("encoder", "--"), ("true_caption", ":")):
            ax.axhline(scores[name]["all"]["colour_shape_found"], ls=style, color="gray", label=name)
        ax.set_xscale("log")
        ax.legend(fontsize=5)
    ax.set_xlabel("noise draws per image", fontsize=7)
    ax.set_ylabel("colour+shape found", fontsize=7)
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=6)
    fig.suptitle("Stage 1's signal: where the loss separates captions, and what it can reach", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def free_embeddings(dec, latents, starts: dict, conds: dict, opt: dict, cfg: dict, scenes, spec) -> tuple[dict, dict]:
    """Part (b): embeddings optimised per image by stage 1's own loss from each of ``starts`` (the
    encoder's, with snapshots on the way, and the true caption's), rendered beside the encoder's,
    the true caption's and the empty caption's conditions and scored for shape. Returns the
    section of signal.json and the renders."""
    seed = int(cfg["seed"])
    snapshots = [n for n in opt["optimise_snapshots"] if n < opt["optimise_steps"]]
    free = {
        name: refine(
            dec, latents, z0, opt["optimise_steps"], opt["optimise_lr"], opt["optimise_draws"], seed,
            snapshots if name == "free_from_encoder" else (),
        )
        for name, z0 in starts.items()
    }  # fmt: skip
    with torch.no_grad():
        sources = {
            "encoder": conds["encoder"],
            **{f"free_from_encoder@{n}": dec.condition(z) for n, z in free["free_from_encoder"][2].items()},
            **{k: dec.condition(z) for k, (z, _, _) in free.items()},
            "true_caption": conds["true_caption"],
            "empty_caption": conds["empty_caption"],
        }
    renders = {}
    for name, cond in sources.items():
        logging.getLogger("vlv").info("rendering %s at guidance %g", name, opt["guidance"])
        guidance = opt["guidance"] if name != "empty_caption" else 1.0
        renders[name] = sample_all(dec, cond, guidance, cfg["reconstruct_steps"], seed)
    section = {
        "steps": opt["optimise_steps"],
        "lr": opt["optimise_lr"],
        "draws": opt["optimise_draws"],
        "guidance": opt["guidance"],
        "snapshots": snapshots,
        "training_loss": {k: losses_seen for k, (_, losses_seen, _) in free.items()},
        "scores": {name: shape_scores(scenes, r, spec) for name, r in renders.items()},
    }
    return section, renders


def parse_args(argv=None):
    p = stage_parser(__doc__)
    p.add_argument("--encoder", required=True)
    p.add_argument("--decoder", required=True)
    p.add_argument("--images", required=True, help="evaluation shards with scene graphs (toy profile)")
    p.add_argument("--shapes", default=None, help="the Shapes world config as JSON (toy profile)")
    p.add_argument("--vision", required=True, help="the Florence-2 folder stage 1 starts from (c)")
    p.add_argument("--pool", required=True, help="stage 1's training shards (c)")
    p.add_argument("--subset", required=True, help="subset.json: its kept keys are stage 1's training set (c)")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--options", required=True, help="the diagnosis's settings: the config's diagnose_stage1 section, as JSON"
    )
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if not args.shapes:
        raise SystemExit(
            "the diagnosis reads scene graphs and scores with the Shapes detector: toy profile only (--shapes)"
        )
    return args


def chosen_scenes(images_dir: str, n_images: int, per_count: int):
    """The evaluation images the diagnosis reads: ``per_count`` of each object count among the first
    ``n_images``; their keys, images and scenes."""
    keys, images, metas = load_images(images_dir, ShardIndex(images_dir).keys[:n_images])
    scenes = [Scene.from_json(m["scene"]) for m in metas]
    chosen = stratified(scenes, per_count)
    return [keys[i] for i in chosen], images[chosen], [scenes[i] for i in chosen]


def loss_gaps(dec, latents, conds: dict, counts: np.ndarray, swapped, opt: dict, seed: int) -> dict:
    """Part (a): the paired denoising-loss gaps to the true caption, per timestep and object count
    (``counts``: the objects of each image)."""
    timesteps = [int(t) for t in opt["timesteps"]]
    snr = log_snr(dec, timesteps)
    losses = loss_table(dec, latents, conds, timesteps, opt["draws"], seed)
    return {
        "images": len(counts),
        "objects_per_image": counts.tolist(),
        "swap_kinds": {k: sum(kind == k for _, kind in swapped) for k in ("permuted", "replaced")},
        "timesteps": timesteps,
        "log_snr": snr,
        "draws": opt["draws"],
        "gaps_to_true_caption": gap_summary(losses, counts, timesteps, snr),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    log = setup_logging()
    cfg, opt = load_params(args.params), json.loads(args.options)
    device, seed = pick_device(args.device), int(cfg["seed"])
    spec = WorldSpec.from_config(json.loads(args.shapes))
    encoder = VLVEncoder.from_pretrained(args.encoder).to(device)
    dec = FrozenT2IDecoder(args.decoder, route=encoder_route(encoder, cfg["route"])).to(device)
    keys, images, scenes = chosen_scenes(args.images, cfg["n_eval_images"], opt["per_count"])
    swapped = [swap_shapes(s, spec) for s in scenes]
    captions = [canonical_caption(s, seed) for s in scenes]
    counts = np.array([len(s.objects) for s in scenes])
    log.info("%d images (%s objects each)", len(scenes), dict(zip(*np.unique(counts, return_counts=True))))

    latents = image_latents(dec, images)
    z_enc = embed_images(encoder, images, device)
    with torch.no_grad():
        conds = {
            "encoder": dec.condition(z_enc),
            "true_caption": dec.encode_text(captions),
            "shapes_swapped": dec.encode_text([canonical_caption(s, seed) for s, _ in swapped]),
            "empty_caption": dec.encode_text([""] * len(scenes)),
        }
    result = loss_gaps(dec, latents, conds, counts, swapped, opt, seed)
    renders = {}
    if opt["optimise_steps"]:
        starts = {"free_from_encoder": z_enc, "free_from_caption": caption_embeddings(dec, captions)}
        result["free_embeddings"], renders = free_embeddings(dec, latents, starts, conds, opt, cfg, scenes, spec)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if opt["capacity_steps"]:
        result["capacity"] = capacity_check(cfg, opt["capacity_steps"], args, spec, images, scenes, out)
    (out / "signal.json").write_text(json.dumps(result, indent=2) + "\n")
    save_figure(
        out / "signal.png", result["gaps_to_true_caption"], result.get("free_embeddings", {}), result.get("capacity")
    )
    if renders:
        save_image_grid(out / "grid.png", {"original": images, **renders}, n=12, title="free embeddings (b)")
    write_manifest(
        out / "manifest.json",
        build_manifest(
            "diagnose_stage1", cfg, seed, device=str(device), encoder=args.encoder, decoder=args.decoder,
            images=args.images, keys=keys, options=opt,
        ),
    )  # fmt: skip
    print(format_result(result))
    return 0


def format_result(r: dict) -> str:
    lines = [f"{'t':>5s} {'logSNR':>7s} " + " ".join(f"{n:>18s}" for n in r["gaps_to_true_caption"])]
    gaps = r["gaps_to_true_caption"]
    for i, t in enumerate(r["timesteps"]):
        cells = [f"{g['all']['by_t'][i]['gap']:10.4f} ({g['all']['by_t'][i]['se'] or 0:.4f})" for g in gaps.values()]
        lines.append(f"{t:5d} {r['log_snr'][i]:7.2f} " + " ".join(f"{c:>18s}" for c in cells))
    for name, by in r.get("free_embeddings", {}).get("scores", {}).items():
        shape = "  ".join(f"{s}: {v['shape_right_of_drawn_colours']:.0%}" for s, v in by.items() if s != "all")
        lines.append(f"{name:18s} colour+shape {by['all']['colour_shape_found']:6.1%}  shape right of drawn: {shape}")
    if "capacity" in r:
        c = r["capacity"]
        by = "  ".join(
            f"{s}: {c[s]['shape_right']:.0%}" for s in c if s not in ("all", "steps", "training_images", "seconds")
        )
        lines.append(
            f"capacity ({c['steps']} steps): shape right {c['all']['shape_right']:.1%} ({by}), size right {c['all']['size_right']:.1%}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
