"""Table 3: questions from scene graphs, answers read from captions, scoring, prompts and readers."""

import json

import pytest
from conftest import chat_server

from vlv.evaluate.evaluate_vqa import evaluate
from vlv.evaluate.vqa_readers import LocalLLMReader, build_prompt, make_reader, normalize_answer, pick_exemplars, score
from vlv.shapes.captions import teacher_caption
from vlv.shapes.questions import answer_from_caption, make_questions
from vlv.shapes.world import Scene, WorldSpec, sample_scenes
from vlv.stages.tables import vqa_rows, write_table


def _scene():
    """Two circles (so "What colour is the circle?" is ambiguous) and a square."""
    objs = [
        {"shape": "circle", "colour": "red", "size": "small", "row": 0, "col": 0, "position": "top left",
         "center": [5.0, 5.0], "extent": 6.0},
        {"shape": "circle", "colour": "blue", "size": "large", "row": 2, "col": 2, "position": "bottom right",
         "center": [27.0, 27.0], "extent": 10.0},
        {"shape": "square", "colour": "green", "size": "small", "row": 1, "col": 1, "position": "center",
         "center": [16.0, 16.0], "extent": 6.0},
    ]  # fmt: skip
    return Scene.from_json({"id": 7, "objects": objs})


def test_questions_are_unambiguous_and_true_of_the_scene():
    qs = make_questions(_scene(), "k7")
    by_q = {q["question"]: q["answers"] for q in qs}
    assert by_q["How many objects are there?"] == ["3"]
    assert by_q["What shape is the blue object?"] == ["circle"]
    assert by_q["Where is the red circle?"] == ["top left"]
    assert by_q["What colour is the square?"] == ["green"]
    assert "What colour is the circle?" not in by_q  # two circles: ambiguous, not asked
    assert len({q["qid"] for q in qs}) == len(qs) and all(q["key"] == "k7" for q in qs)


def test_the_parser_reader_answers_what_the_caption_says_and_unknown_otherwise(toy_config):
    scene = _scene()
    qs = make_questions(scene, "k7")
    spec = WorldSpec.from_config(toy_config["shapes"])
    full = teacher_caption(scene, spec)
    assert all(score(answer_from_caption(full, q["question"]), q["answers"], "exact_match") == 1 for q in qs)
    partial = "There are two shapes: a small red circle at the top right and a green triangle."
    ask = {q["question"]: q for q in qs}
    assert answer_from_caption(partial, "How many objects are there?") == "2"  # stated, and wrong
    assert answer_from_caption(partial, "Where is the red circle?") == "top right"  # wrong cell
    assert answer_from_caption(partial, "What shape is the green object?") == "triangle"  # wrong shape
    assert answer_from_caption(partial, "What shape is the blue object?") == "unknown"  # not mentioned
    assert answer_from_caption("a blue circle and a green square", "How many objects are there?") == "2"
    right = [q for q in ask if score(answer_from_caption(partial, q), ask[q]["answers"], "exact_match")]
    assert right == ["What shape is the red object?"]  # the only fact the caption gets right


def test_answers_are_normalised_and_scored_by_exact_match_or_vqa_accuracy():
    assert normalize_answer("Two.") == "2" and normalize_answer("The Centre\nmore") == "center"
    assert normalize_answer("a Top-Left") == "top left" and normalize_answer("1,000") == "1000"
    assert score("two", ["2"], "exact_match") == 1.0 and score("three", ["2"], "exact_match") == 0.0
    humans = ["dog"] * 2 + ["cat"] * 8
    assert score("dog", humans, "vqa_accuracy") == pytest.approx(2 / 3)
    assert score("Cat", humans, "vqa_accuracy") == 1.0 and score("cow", humans, "vqa_accuracy") == 0.0
    with pytest.raises(ValueError, match="unknown VQA metric"):
        score("x", ["x"], "bleu")


def _questions(toy_config, n=12):
    spec = WorldSpec.from_config(toy_config["shapes"])
    scenes = sample_scenes(spec, 5, n)
    return scenes, [q for s in scenes for q in make_questions(s, str(s.id))], spec


def test_exemplars_come_from_other_images_with_their_references_and_follow_the_seed(toy_config):
    scenes, qs, spec = _questions(toy_config)
    refs = {str(s.id): f"reference of {s.id}" for s in scenes}
    ex = pick_exemplars(qs, refs, 4, seed=0)
    assert all(len(e) == 4 for e in ex)
    assert all(all(x["context"] != refs[q["key"]] for x in e) for q, e in zip(qs, ex))  # never its own image
    assert ex == pick_exemplars(qs, refs, 4, seed=0) and ex != pick_exemplars(qs, refs, 4, seed=1)
    assert pick_exemplars(qs, refs, 0, seed=0) == [[] for _ in qs]
    prompt = build_prompt("a red circle", "What colour is the circle?", ex[0])
    assert prompt.count("\nAnswer:") == 5 and prompt.endswith("Question: What colour is the circle?\nAnswer:")
    assert all(f"Answer: {x['answer']}" in prompt for x in ex[0])
    with pytest.raises(SystemExit, match="in-context examples"):
        make_reader({"reader": "shapes_parser"}).answer(["c"], ["q"], ex[:1])


def test_local_llm_reader_answers_with_examples_and_keeps_the_question_when_truncating(root, toy_config):
    scenes, qs, spec = _questions(toy_config, n=6)
    qs = qs[:6]
    caps = {str(s.id): teacher_caption(s, spec) for s in scenes}
    cfg = {"reader": "local", "model": str(root / "models/toy/lm"), "shots": [0, 4], "seed": 0,
           "metric": "exact_match", "batch_size": 4, "max_new_tokens": 4}  # fmt: skip
    reader = make_reader(cfg)
    assert isinstance(reader, LocalLLMReader)
    res = evaluate(qs, caps, caps, reader, cfg)
    for shots in ("0", "4"):
        answers = res["shots"][shots]["answers"]
        assert len(answers) == 6 and all(isinstance(a, str) and "\n" not in a for a in answers.values())
        assert 0.0 <= res["shots"][shots]["accuracy"] <= 1.0
    reader.max_prompt_tokens = 40  # shorter than a 4-shot prompt: the oldest examples are cut
    res = evaluate(qs, caps, caps, reader, {**cfg, "shots": [4]})
    assert reader.truncated == 6 and len(res["shots"]["4"]["answers"]) == 6


def test_api_reader_sends_the_prompt_and_reads_the_first_line(monkeypatch):
    prompts = []

    def reader(auth, body):
        prompts.append(body["messages"][0]["content"])
        return "Top left.\nBecause..."

    ex = [{"context": "a blue square at the top left", "question": "Where is the blue square?", "answer": "top left"}]
    with chat_server(reader) as url:
        api = {"base_url": url, "key_env": "VLV_TEST_VQA_KEY", "requests_per_minute": 6000, "max_retries": 0,
               "timeout_s": 5}  # fmt: skip
        cfg = {"reader": "api", "model": "reader-llm", "max_new_tokens": 5, "api": api}
        with pytest.raises(SystemExit, match="VLV_TEST_VQA_KEY"):
            make_reader(cfg)
        monkeypatch.setenv("VLV_TEST_VQA_KEY", "sk-test")
        answers = make_reader(cfg).answer(["a red circle at the top left"], ["Where is the red circle?"], [ex])
    assert answers == ["Top left."] and score(answers[0], ["top left"], "exact_match") == 1.0
    assert prompts[-1] == build_prompt("a red circle at the top left", "Where is the red circle?", ex)


def test_vqa_table_has_a_row_per_captioner_and_shots(tmp_path):
    files = []
    for name, acc in (("teacher", 1.0), ("vlv", 0.5)):
        f = tmp_path / f"{name}.json"
        shots = {s: {"accuracy": acc, "by_kind": {"count": acc, "shape": acc}, "unknown_share": 0.1, "answers": {}}
                 for s in ("0", "4")}  # fmt: skip
        f.write_text(json.dumps({"reader": "r", "metric": "exact_match", "questions": 10, "shots": shots}))
        files.append(str(f))
    rows = vqa_rows(files, "toy", "Shapes")
    assert [(r["captioner"], r["shots"]) for r in rows] == [("teacher", 0), ("teacher", 4), ("vlv", 0), ("vlv", 4)]
    write_table(rows, tmp_path / "vqa.csv", files)
    metrics = json.loads((tmp_path / "vqa.json").read_text())
    assert metrics["vlv 4-shot"]["accuracy"] == 0.5 and metrics["teacher 0-shot"]["accuracy (count)"] == 1.0


def test_a_further_question_set_gets_its_own_rows_and_metric_keys(tmp_path):
    """vqa.more (the paper's OK-VQA): its results name their dataset; rows and DVC metric keys keep
    the two sets of one captioner apart."""
    files = []
    for sub, dataset, acc in (("", None, 0.6), ("okvqa", "OK-VQA val", 0.4)):
        (tmp_path / sub).mkdir(exist_ok=True)
        f = tmp_path / sub / "vlv.json"
        shots = {"0": {"accuracy": acc, "by_kind": {"other": acc}, "unknown_share": 0.0, "answers": {}}}
        result = {"reader": "r", "metric": "vqa_accuracy", "questions": 7, "shots": shots}
        f.write_text(json.dumps({**result, "dataset": dataset} if dataset else result))
        files.append(str(f))
    rows = vqa_rows(files, "paper", "VQAv2 val")
    assert [(r["captioner"], r["dataset"], r["accuracy"]) for r in rows] == [
        ("vlv", "VQAv2 val", 0.6),
        ("vlv", "OK-VQA val", 0.4),
    ]
    write_table(rows, tmp_path / "vqa.csv", files)
    metrics = json.loads((tmp_path / "vqa.json").read_text())
    assert metrics["VQAv2 val: vlv 0-shot"]["accuracy"] == 0.6 and metrics["OK-VQA val: vlv 0-shot"]["accuracy"] == 0.4
