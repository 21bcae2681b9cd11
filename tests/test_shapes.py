import numpy as np
import pytest

from vlv.shapes.captions import N_PHRASINGS, POSITION_PHRASES, reference_captions, short_caption, teacher_caption
from vlv.shapes.detect import by_object_count, detect, score_scene, summarise
from vlv.shapes.parse import parse_caption
from vlv.shapes.world import Scene, WorldSpec, render, render_array, sample_scenes

SPEC = WorldSpec()


def test_same_seed_same_bytes_other_seed_other_scenes():
    a = render_array(sample_scenes(SPEC, 5, 50), SPEC)
    b = render_array(sample_scenes(SPEC, 5, 50), SPEC)
    c = render_array(sample_scenes(SPEC, 6, 50), SPEC)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_scenes_follow_the_spec():
    scenes = sample_scenes(SPEC, 0, 500)
    counts = {len(s.objects) for s in scenes}
    assert counts == {1, 2, 3}
    for s in scenes:
        cells = [(o.row, o.col) for o in s.objects]
        colours = [o.colour for o in s.objects]
        assert len(set(cells)) == len(cells) and len(set(colours)) == len(colours)


def test_scene_json_round_trip():
    s = sample_scenes(SPEC, 1, 1)[0]
    assert Scene.from_json(s.to_json()) == s


def _same_objects(scene, parsed):
    want = sorted((o.colour, o.shape, o.size, o.position) for o in scene.objects)
    got = sorted((o.colour, o.shape, o.size, o.position) for o in parsed.objects)
    return want == got


@pytest.mark.parametrize("phrasing", range(N_PHRASINGS))
def test_parser_reads_every_phrasing_back(phrasing):
    rng = np.random.default_rng(0)
    for s in sample_scenes(SPEC, 11, 300):
        cap = short_caption(s, rng, phrasing=phrasing)
        res = parse_caption(cap)
        assert _same_objects(s, res), cap
        assert res.unread == []


def test_parser_reads_teacher_captions_with_count_and_relations():
    for s in sample_scenes(SPEC, 12, 300):
        res = parse_caption(teacher_caption(s, SPEC))
        assert _same_objects(s, res)
        assert res.count == len(s.objects)
        for i, a in enumerate(s.objects):
            for b in s.objects[i + 1 :]:
                rels = {
                    r for (x, r, y) in res.relations if x == f"{a.colour} {a.shape}" and y == f"{b.colour} {b.shape}"
                }
                assert ("above" in rels) == (a.row < b.row)
                assert ("left of" in rels) == (a.col < b.col)


def test_parser_tolerates_other_wording_and_reports_what_it_cannot_read():
    res = parse_caption("There is a big red square on the left side, and also a tiny blue circle in the upper right!")
    got = sorted((o.colour, o.shape, o.size, o.position) for o in res.objects)
    assert got == [("blue", "circle", "small", "top right"), ("red", "square", "large", "left")]
    assert res.unread == ["also"]
    res = parse_caption("a square in green somewhere fuzzy")
    assert (res.objects[0].colour, res.objects[0].shape, res.objects[0].position) == ("green", "square", None)
    assert res.unread == ["somewhere", "fuzzy"]


def test_every_position_phrase_reads_back_to_its_cell():
    for cell, phrases in POSITION_PHRASES.items():
        for ph in phrases:
            res = parse_caption(f"a small red circle {ph}")
            assert res.objects[0].position == cell, ph


def test_reference_captions_are_distinct_and_deterministic():
    s = sample_scenes(SPEC, 3, 5)[4]
    refs = reference_captions(s, 3, n=5)
    assert refs == reference_captions(s, 3, n=5) and len(refs) == 5
    assert len(set(refs)) >= 3


def test_detector_recovers_ground_truth_renders():
    scenes = sample_scenes(SPEC, 21, 400)
    imgs = render_array(scenes, SPEC)
    m = summarise([score_scene(s, detect(im, SPEC), SPEC) for s, im in zip(scenes, imgs)])
    assert m["colour_shape_recall"] == 1.0
    assert m["cell_accuracy_of_matched"] == 1.0 and m["size_accuracy_of_matched"] == 1.0
    assert m["mean_center_error_px"] < 1.0
    assert m["extra_detections_per_image"] == 0.0
    assert abs(m["mean_scale_bias"]) < 0.01 and m["mean_scale_error"] < 0.02


def test_scores_by_object_count_keep_each_stratum_apart():
    """In three-object scenes, the first object drawn with another shape: those scenes score 2/3 of
    shapes right of the drawn colours, the one-object scenes stay whole, and "all" pools them."""
    import dataclasses

    scenes = sample_scenes(SPEC, 3, 300)
    ones = [s for s in scenes if len(s.objects) == 1][:10]
    threes = [s for s in scenes if len(s.objects) == 3][:10]

    def other_shape(o):
        return dataclasses.replace(o, shape=next(k for k in SPEC.shapes if k != o.shape))

    drawn = ones + [dataclasses.replace(s, objects=[other_shape(s.objects[0]), *s.objects[1:]]) for s in threes]
    truth = ones + threes
    by = by_object_count([score_scene(s, detect(im, SPEC), SPEC) for s, im in zip(truth, render_array(drawn, SPEC))])
    assert set(by) == {"all", "1", "3"}
    assert by["1"] == {
        "objects": 10,
        "colour_shape_found": 1.0,
        "shape_right_of_drawn_colours": 1.0,
        "size_right_of_matched": 1.0,
    }
    assert by["3"]["objects"] == 30 and by["3"]["shape_right_of_drawn_colours"] == pytest.approx(2 / 3, abs=1e-4)
    assert by["all"]["colour_shape_found"] == pytest.approx(30 / 40, abs=1e-4)


def test_detector_scale_bias_says_objects_are_drawn_larger():
    """Renders whose small objects are drawn at the large size: the signed bias is the size gap, the
    unsigned error the same; drawn smaller, the bias turns negative."""
    import dataclasses

    scenes = [s for s in sample_scenes(SPEC, 5, 200) if all(o.size == "small" for o in s.objects)][:20]
    big = SPEC.sizes["large"] * SPEC.image_size
    drawn = [
        dataclasses.replace(s, objects=[dataclasses.replace(o, size="large", extent=big) for o in s.objects])
        for s in scenes
    ]
    m = summarise([score_scene(s, detect(im, SPEC), SPEC) for s, im in zip(scenes, render_array(drawn, SPEC))])
    gap = SPEC.sizes["large"] - SPEC.sizes["small"]
    assert m["colour_shape_recall"] > 0.9 and m["size_accuracy_of_matched"] < 0.1
    assert m["mean_scale_bias"] == pytest.approx(gap, abs=0.03)
    assert m["mean_scale_error"] == pytest.approx(m["mean_scale_bias"])
    m = summarise([score_scene(d, detect(im, SPEC), SPEC) for d, im in zip(drawn, render_array(scenes, SPEC))])
    assert m["mean_scale_bias"] == pytest.approx(-gap, abs=0.03)


def test_detector_sees_a_moved_object_in_its_new_cell_and_ignores_noise():
    s = sample_scenes(SPEC, 2, 1)[0]
    s.objects = s.objects[:1]
    o = s.objects[0]
    moved = Scene(
        id=0,
        objects=[
            type(o)(
                **{
                    **o.__dict__,
                    "col": (o.col + 1) % 3,
                    "center": ((((o.col + 1) % 3) + 0.5) * SPEC.cell_px, o.center[1]),
                }
            )
        ],
    )
    img = np.asarray(render(moved, SPEC)).astype(np.int16)
    noisy = np.clip(img + np.random.default_rng(0).integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
    score = score_scene(s, detect(noisy, SPEC), SPEC)
    assert score.colour_shape_hits == 1 and score.cell_hits == 0
    blank = np.full_like(noisy, 128)
    assert detect(blank, SPEC) == []


def test_moved_objects_keep_what_they_are_and_change_cells():
    from vlv.shapes.world import move_objects

    spec = SPEC
    rng = np.random.default_rng(0)
    for scene in sample_scenes(spec, 4, 30):
        moved = move_objects(scene, spec, rng)
        before = {o.colour: o for o in scene.objects}  # colours are distinct within a scene
        assert sorted(before) == sorted(o.colour for o in moved.objects)
        cells = [(o.row, o.col) for o in moved.objects]
        assert len(set(cells)) == len(cells)
        for o in moved.objects:
            b = before[o.colour]
            assert (o.shape, o.size, o.extent) == (b.shape, b.size, b.extent) and (o.row, o.col) != (b.row, b.col)
            assert o.position == spec.cell_name(o.row, o.col) and spec.cell_of_point(*o.center) == (o.row, o.col)
