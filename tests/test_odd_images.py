"""The issue's held-out folder of odd and broken image files through the user commands: every good
file gets its output, every broken one a line naming it and why, and nothing crashes."""

import json

import numpy as np
import torch
from conftest import odd_image_folder
from PIL import Image

from vlv.cli import main as vlv_main
from vlv.models.vlv_captioner import VLVCaptioner
from vlv.models.vlv_encoder import VLVEncoder


def _reported(err: str, broken: list[str]) -> dict[str, str]:
    lines = {line.split(": cannot read image", 1)[0].rsplit("/", 1)[-1]: line for line in err.splitlines()}
    return {name: lines.get(name, "") for name in broken}


def test_odd_and_broken_files_through_vlv_caption_and_vlv_reconstruct(root, tmp_path, capsys):
    good, broken = odd_image_folder(tmp_path / "held out")
    toy = root / "models/toy"
    torch.manual_seed(0)
    VLVCaptioner.build(str(toy / "vision"), str(toy / "t2i"), str(toy / "lm"), "direct", 8).save_pretrained(
        tmp_path / "captioner"
    )
    out = tmp_path / "captions.jsonl"
    rc = vlv_main(["caption", str(tmp_path / "held out"), "--captioner", str(tmp_path / "captioner"),
                   "--max-new-tokens", "4", "--batch-size", "4", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1  # some files were broken; the rest were captioned
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["image"].rsplit("/", 1)[-1] for r in rows) == good
    assert all(isinstance(r["caption"], str) for r in rows)
    reasons = _reported(err, broken)
    assert all(reasons.values()), reasons  # each broken file named, with its reason
    assert "too large" in reasons["bomb.png"]

    VLVEncoder.from_florence(str(toy / "vision"), num_queries=8, clip_dim=128, route="direct").save_pretrained(
        tmp_path / "encoder"
    )
    recon = tmp_path / "reconstructions"
    rc = vlv_main(["reconstruct", str(tmp_path / "held out"), "--encoder", str(tmp_path / "encoder"), "--decoder",
                   str(toy / "t2i"), "--steps", "2", "--guidance", "2", "--refine-steps", "2",
                   "--out", str(recon)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and all(_reported(err, broken).values())
    made = sorted(p.name for p in recon.iterdir())
    assert len(made) == len(good) and len(set(made)) == len(good)  # one each, the two "same" stems apart
    assert all(np.asarray(Image.open(recon / name)).shape == (32, 32, 3) for name in made)
