"""The ``vlv`` command line.

    vlv config [KEY] [--explain] [--configfile FILE ...]   a stage's params as JSON, or what KEY means
    vlv parse-caption TEXT                      read a Shapes caption into objects and relations
    vlv detect IMAGE...                         list the flat-coloured objects in images
    vlv reconstruct IMAGE... --encoder DIR      image -> caption embeddings -> image, with a trained encoder
    vlv compose A B --encoder DIR [--tokens-from-a K...]  A's first K caption tokens + B's, rendered
    vlv caption IMAGE|FOLDER... --captioner DIR  captions from a trained VLV captioner (JSONL)
    vlv pull [DVC PULL ARGS]                    dvc pull, then file times Snakemake reads as up to date
    vlv doctor [--profile toy|paper]            what a profile needs: present, missing, how to fetch it
    vlv <stage> --params JSON ...               run one pipeline stage (what the Snakemake rules call)

Stages: generate-shapes, pretrain-toy-t2i, pretrain-toy-clip, pretrain-toy-lm,
pretrain-toy-vision, evaluate-standins, subset, distill-stage1, reconstruct-eval,
synthesize-captions, finetune-stage2, caption-eval, compose-eval.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import asdict

STAGES = {
    "generate-shapes": "vlv.stages.generate_shapes",
    "pretrain-toy-t2i": "vlv.toy.pretrain_toy_t2i",
    "pretrain-toy-clip": "vlv.toy.pretrain_toy_clip",
    "pretrain-toy-lm": "vlv.toy.pretrain_toy_lm",
    "pretrain-toy-vision": "vlv.toy.pretrain_toy_vision",
    "evaluate-standins": "vlv.toy.evaluate_standins",
    "subset": "vlv.stages.subset",
    "distill-stage1": "vlv.stages.distill_stage1",
    "reconstruct-eval": "vlv.stages.reconstruct",
    "synthesize-captions": "vlv.stages.synthesize_captions",
    "finetune-stage2": "vlv.stages.finetune_stage2",
    "caption-eval": "vlv.stages.caption",
    "compose-eval": "vlv.stages.compose",
}


def output_stems(paths: list[str]) -> dict[str, str]:
    """A distinct name stem for each input file: its stem; with its extension where two inputs share
    a stem (``chelsea.jpg``, ``chelsea.webp``); with a hash of its path where even that is shared
    (``a/x.png``, ``b/x.png``). Deterministic for a given set of inputs."""
    import hashlib
    from collections import Counter
    from pathlib import Path

    def with_ext(p: Path) -> str:
        return f"{p.stem}_{p.suffix.lstrip('.')}" if p.suffix else p.stem

    stems = Counter(Path(p).stem for p in paths)
    names = {p: Path(p).stem if stems[Path(p).stem] == 1 else with_ext(Path(p)) for p in paths}
    taken = Counter(names.values())
    for p, name in names.items():
        if taken[name] > 1:
            names[p] = f"{name}_{hashlib.sha1(str(Path(p).resolve()).encode()).hexdigest()[:8]}"
    return names


def input_files(paths: list[str]) -> list[str]:
    """The image files named: each file, and each file of a folder (sorted, hidden ones left out)."""
    from pathlib import Path

    files: list[str] = []
    for p in map(Path, paths):
        files += (
            [str(f) for f in sorted(p.iterdir()) if f.is_file() and not f.name.startswith(".")]
            if p.is_dir()
            else [str(p)]
        )
    return files


def read_images(paths: list[str]):
    """Yield (path, PIL image) for each image file, or each file of a folder (sorted); a file that
    cannot be read is reported on stderr and skipped. The last value of ``status`` is 1 if any failed."""
    from vlv.data.shards import BadImage, decode_image

    for path in input_files(paths):
        try:
            with open(path, "rb") as f:
                yield str(path), decode_image(f.read())
        except (OSError, BadImage) as e:
            print(f"{path}: cannot read image ({e})", file=sys.stderr)
            yield str(path), None


def _parse_caption(argv) -> int:
    from vlv.shapes.parse import parse_caption

    p = argparse.ArgumentParser(prog="vlv parse-caption")
    p.add_argument("text")
    res = parse_caption(p.parse_args(argv).text)
    print(json.dumps(asdict(res), indent=2))
    return 0


def _detect(argv) -> int:
    import numpy as np

    from vlv.config import ROOT, load_config
    from vlv.shapes.detect import detect
    from vlv.shapes.world import WorldSpec

    p = argparse.ArgumentParser(prog="vlv detect")
    p.add_argument("images", nargs="+")
    p.add_argument("--configfile", nargs="+", default=[str(ROOT / "config.yaml")])
    args = p.parse_args(argv)
    spec = WorldSpec.from_config(load_config(*args.configfile)["shapes"])
    status = 0
    for path, img in read_images(args.images):
        if img is None:
            status = 1
            continue
        print(json.dumps({"image": path, "objects": [asdict(d) for d in detect(np.asarray(img), spec)]}))
    return status


def _encoder_and_decoder(args):
    """The trained encoder (``--encoder``) and the frozen decoder (``--decoder``) along the route the
    encoder was trained on (``--route``, when given, must be that one)."""
    from vlv.models.frozen_decoder import FrozenT2IDecoder, encoder_route
    from vlv.models.vlv_encoder import VLVEncoder

    encoder = VLVEncoder.from_pretrained(args.encoder)
    try:
        route = encoder_route(encoder, args.route)
    except ValueError as e:
        raise SystemExit(f"{args.encoder}: {e}") from None
    return encoder, FrozenT2IDecoder(args.decoder, route=route)


def _reconstruct(argv) -> int:
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from vlv.config import ROOT, load_config
    from vlv.data.shards import square_crop
    from vlv.models import ROUTES

    cfg = load_config(ROOT / "config.yaml")
    p = argparse.ArgumentParser(
        prog="vlv reconstruct", description="Reconstruct images through a trained VLV encoder and the frozen decoder."
    )
    p.add_argument("images", nargs="+")
    p.add_argument("--encoder", required=True, help="a distill_stage1 output folder")
    p.add_argument(
        "--decoder", default=cfg["models"]["t2i"], help="the T2I pipeline folder or hub id it was trained with"
    )
    p.add_argument("--route", default=None, choices=ROUTES, help="default: the one the encoder was trained on")
    p.add_argument("--guidance", type=float, nargs="+", default=[2.0])
    p.add_argument("--steps", type=int, default=cfg["stage1"]["reconstruct_steps"])
    p.add_argument("--seed", type=int, default=0)
    s1 = cfg["stage1"]
    p.add_argument(
        "--refine-steps",
        type=int,
        default=s1["refine_steps"],
        help="Adam steps refining the embeddings on each image first (stage1.refine_steps; 0: none)",
    )
    p.add_argument("--out", default="reconstructions", help="output folder (PNG per image and guidance)")
    args = p.parse_args(argv)

    import torch

    from vlv.models.refine import Refiner

    encoder, dec = _encoder_and_decoder(args)
    refiner = None
    if args.refine_steps > 0:
        refiner = Refiner(dec, args.refine_steps, s1["refine_lr"], s1["refine_draws"], args.seed)
    side = dec.image_size
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    status = 0
    files = input_files(args.images)
    names = output_stems(files)
    for path, img in read_images(files):
        if img is None:
            status = 1
            continue
        arr = np.asarray(square_crop(img, side))  # the centre crop every stage uses, not a squash
        with torch.no_grad():
            z = encoder(encoder.preprocess([arr]))
            cond = dec.condition(refiner(arr[None], z) if refiner else z)
        for g in args.guidance:
            target = out / f"{names[path]}_recon_cfg{g:g}.png"
            Image.fromarray(dec.sample(cond, g, args.steps, args.seed)[0]).save(target)
            print(target)
    return status


def _compose(argv) -> int:
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from vlv.config import ROOT, load_config
    from vlv.data.shards import square_crop
    from vlv.models import ROUTES

    cfg = load_config(ROOT / "config.yaml")
    p = argparse.ArgumentParser(
        prog="vlv compose",
        description="Render the first K caption-embedding tokens of image A followed by the first N_q - K of "
        "image B through the frozen decoder (paper section 4.4.2).",
    )
    p.add_argument("a", help="image A")
    p.add_argument("b", help="image B")
    p.add_argument("--encoder", required=True, help="a distill_stage1 output folder")
    p.add_argument(
        "--decoder", default=cfg["models"]["t2i"], help="the T2I pipeline folder or hub id it was trained with"
    )
    p.add_argument("--route", default=None, choices=ROUTES, help="default: the one the encoder was trained on")
    p.add_argument("--tokens-from-a", type=int, nargs="+", default=None, help="K values (default: N_q/4, /2, 3/4)")
    p.add_argument("--guidance", type=float, default=cfg["ablations"]["compose"]["guidance"])
    p.add_argument("--steps", type=int, default=cfg["stage1"]["reconstruct_steps"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="compositions", help="output folder (one PNG per K)")
    args = p.parse_args(argv)

    from vlv.stages.compose import compose_images, token_counts

    pair = [img for _, img in read_images([args.a, args.b])]
    if len(pair) != 2 or any(img is None for img in pair):
        print("vlv compose takes two image files", file=sys.stderr)
        return 1
    encoder, dec = _encoder_and_decoder(args)
    side = dec.image_size
    a, b = (np.asarray(square_crop(img.convert("RGB"), side))[None] for img in pair)
    n_q = encoder.config["num_queries"]
    ks = token_counts(args.tokens_from_a or [n_q // 4, n_q // 2, 3 * n_q // 4], n_q)
    renders = compose_images(encoder, dec, a, b, ks, args.guidance, args.steps, args.seed, "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for k in ks:
        target = out / f"{Path(args.a).stem}+{Path(args.b).stem}_k{k}_of{n_q}.png"
        Image.fromarray(renders[k][0]).save(target)
        print(target)
    return 0


def _caption(argv) -> int:
    import numpy as np
    from tqdm import tqdm

    p = argparse.ArgumentParser(
        prog="vlv caption",
        description="Caption image files or folders with a trained VLV captioner. With --out, each batch is "
        "written as it is done, and a rerun with the same --out captions only the images not in it yet.",
    )
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--captioner", required=True, help="a finetune_stage2 output folder")
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16, help="images decoded and captioned at a time")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="JSONL output ({image, caption} per line); default: print")
    args = p.parse_args(argv)

    from vlv.data.records import RecordsError, append_records, read_records
    from vlv.models.captioners import VLVCaptionerBackend
    from vlv.training import pick_device

    files = input_files(args.images)
    try:
        done = {r["image"] for r in read_records(args.out, ("image", "caption"))} if args.out else set()
    except RecordsError as e:
        raise SystemExit(f"{e}: not appending to it") from None
    todo = [f for f in files if f not in done]
    if done:
        print(f"{len(files) - len(todo)} of {len(files)} images already in {args.out}", file=sys.stderr)
    backend = VLVCaptionerBackend(
        args.captioner, args.num_beams, args.max_new_tokens, pick_device(args.device), args.batch_size
    )
    status, batch = 0, []

    def write(batch):
        caps = backend.caption([np.asarray(img) for _, img in batch])
        records = [{"image": path, "caption": c} for (path, _), c in zip(batch, caps)]
        if args.out:
            append_records(args.out, records)
        else:
            print("\n".join(json.dumps(r) for r in records), flush=True)

    for path, img in tqdm(read_images(todo), total=len(todo), desc="caption", disable=not args.out):
        if img is None:
            status = 1
            continue
        batch.append((path, img))
        if len(batch) == args.batch_size:
            write(batch)
            batch = []
    if batch:
        write(batch)
    return status


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "config":
        from vlv.config import main as config_main

        return config_main(rest)
    if cmd == "parse-caption":
        return _parse_caption(rest)
    if cmd == "detect":
        return _detect(rest)
    if cmd == "reconstruct":
        return _reconstruct(rest)
    if cmd == "caption":
        return _caption(rest)
    if cmd == "compose":
        return _compose(rest)
    if cmd == "doctor":
        from vlv.doctor import main as doctor_main

        return doctor_main(rest)
    if cmd == "pull":
        from vlv.dvc_pull import main as pull_main

        return pull_main(rest)
    if cmd in STAGES:
        return importlib.import_module(STAGES[cmd]).main(rest)
    print(f"vlv: unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
