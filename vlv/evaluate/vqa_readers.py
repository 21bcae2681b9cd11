"""Questions answered from a caption alone (the paper's Table 3): readers, prompts and scoring.

The paper follows De-Diffusion: the caption stands in for the image in an LLM prompt, the LLM
(DeepSeek-V3) answers with 0, 4 or 32 solved examples in the prompt, and answers are scored by
strict exact match. The prompt template and the choice of examples are not stated; ours are:

- the prompt (``build_prompt``): one instruction line, then each example as
  ``Description: ...`` / ``Question: ...`` / ``Answer: ...`` blocks, then the query block ending in
  ``Answer:``;
- the examples (``pick_exemplars``): drawn with a seeded generator per question from the other
  images' questions, each shown with its image's reference caption (never the captioner's own
  caption, never the question's own image);
- the answer: the reader's text up to the first line break, normalised (``normalize_answer``: lower
  case, punctuation, articles, number words to digits, British/American spellings).

Readers (``make_reader``): ``shapes_parser`` (toy: the exact Shapes reader of
``vlv.shapes.questions``, which cannot use examples), ``local`` (a causal LM folder or hub id
through transformers, batched, greedy) and ``api`` (an OpenAI-compatible chat endpoint, only with a
configured key).
"""

from __future__ import annotations

import logging
import re

import numpy as np
import torch

from vlv.models.captioners import ChatAPI, api_settings
from vlv.models.hub import require_local
from vlv.shapes.questions import answer_from_caption

log = logging.getLogger("vlv")

INSTRUCTION = (
    "Answer the question about an image using only the image's description. Reply with a single word or a short phrase."
)

_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_SPELLINGS = {"color": "colour", "gray": "grey", "centre": "center", "middle": "center"}
_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation or articles, number words as digits, one spelling per word."""
    text = text.strip().split("\n")[0].lower()
    text = re.sub(r"(?<=\d),(?=\d)", "", text)  # 1,000 -> 1000
    words = re.findall(r"[a-z0-9]+", text)
    return " ".join(_NUMBERS.get(w, _SPELLINGS.get(w, w)) for w in words if w not in _ARTICLES)


def score(prediction: str, answers: list[str], metric: str) -> float:
    """``exact_match``: 1 when the normalised prediction equals a normalised reference answer.
    ``vqa_accuracy``: the VQAv2 metric, min(1, humans who gave this answer / 3)."""
    pred = normalize_answer(prediction)
    refs = [normalize_answer(a) for a in answers]
    if metric == "exact_match":
        return float(pred in refs)
    if metric == "vqa_accuracy":
        return min(1.0, sum(r == pred for r in refs) / 3.0)
    raise ValueError(f"unknown VQA metric {metric!r} (exact_match or vqa_accuracy)")


def _block(context: str, question: str, answer: str | None = None) -> str:
    tail = f" {answer}" if answer is not None else ""
    return f"Description: {context}\nQuestion: {question}\nAnswer:{tail}"


def build_prompt(caption: str, question: str, exemplars: list[dict]) -> str:
    """The instruction, ``len(exemplars)`` solved examples, then the question to answer."""
    blocks = [_block(e["context"], e["question"], e["answer"]) for e in exemplars]
    return "\n\n".join([INSTRUCTION, *blocks, _block(caption, question)])


def pick_exemplars(questions: list[dict], references: dict[str, str], shots: int, seed: int) -> list[list[dict]]:
    """For each question, ``shots`` solved examples from other images (seeded per question index)."""
    if shots == 0:
        return [[] for _ in questions]
    pool = [q for q in questions if q["key"] in references]
    if not pool:
        raise SystemExit("in-context examples need reference captions for the questions' images")
    out = []
    for i, q in enumerate(questions):
        rng = np.random.default_rng([seed, i])
        chosen: list[dict] = []
        for j in rng.permutation(len(pool)):
            e = pool[int(j)]
            if e["key"] != q["key"]:
                chosen.append({"context": references[e["key"]], "question": e["question"], "answer": e["answers"][0]})
            if len(chosen) == shots:
                break
        out.append(chosen)
    return out


class ShapesParserReader:
    """The toy reader: exact, from the Shapes parser's reading of the caption."""

    name = "shapes_parser (exact Shapes caption parser)"
    uses_exemplars = False

    def answer(self, captions: list[str], questions: list[str], exemplars: list[list[dict]]) -> list[str]:
        if any(exemplars):
            raise SystemExit("the shapes_parser reader does not read in-context examples: use vqa.shots: [0]")
        return [answer_from_caption(c, q) for c, q in zip(captions, questions)]


class LocalLLMReader:
    """A causal LM through transformers: batched greedy decoding of the prompt's continuation."""

    uses_exemplars = True

    def __init__(self, model: str, max_new_tokens: int, batch_size: int, device=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = require_local(model, what="the VQA reader LLM")
        self.tok = AutoTokenizer.from_pretrained(path)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        limit = getattr(self.model.config, "max_position_embeddings", None) or 4096
        self.max_prompt_tokens = limit - max_new_tokens
        self.truncated = 0
        self.name = f"local:{model}"

    @torch.no_grad()
    def answer(self, captions: list[str], questions: list[str], exemplars: list[list[dict]]) -> list[str]:
        prompts = [build_prompt(c, q, e) for c, q, e in zip(captions, questions, exemplars)]
        out = []
        for i in range(0, len(prompts), self.batch_size):
            enc = self.tok(prompts[i : i + self.batch_size], return_tensors="pt", padding=True)
            if enc["input_ids"].shape[1] > self.max_prompt_tokens:  # keep the question: drop the oldest examples
                self.truncated += int((enc["attention_mask"].sum(1) > self.max_prompt_tokens).sum())
                enc = {k: v[:, -self.max_prompt_tokens :] for k, v in enc.items()}
            enc = {k: v.to(self.device) for k, v in enc.items()}
            gen = self.model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tok.pad_token_id,
            )
            texts = self.tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out.extend(t.strip().split("\n")[0].strip() for t in texts)
        return out


class APIReader:
    """An OpenAI-compatible chat endpoint (the paper used DeepSeek-V3); one request per question."""

    uses_exemplars = True

    def __init__(self, api_cfg: dict, model: str, max_new_tokens: int):
        self.api = ChatAPI(api_settings(api_cfg, model, max_new_tokens), "the API VQA reader", "vqa.reader: local")
        self.name = f"api:{model}"

    def answer(self, captions: list[str], questions: list[str], exemplars: list[list[dict]]) -> list[str]:
        return [
            self.api.complete(build_prompt(c, q, e)).split("\n")[0].strip()
            for c, q, e in zip(captions, questions, exemplars)
        ]


def make_reader(vqa_cfg: dict):
    reader = vqa_cfg["reader"]
    if reader == "shapes_parser":
        return ShapesParserReader()
    if not vqa_cfg.get("model"):
        raise SystemExit(f"vqa.reader {reader!r} needs vqa.model (a local folder, hub id or API model name)")
    if reader == "local":
        return LocalLLMReader(vqa_cfg["model"], vqa_cfg["max_new_tokens"], vqa_cfg["batch_size"])
    if reader == "api":
        return APIReader(vqa_cfg["api"], vqa_cfg["model"], vqa_cfg["max_new_tokens"])
    raise SystemExit(f"unknown vqa.reader {reader!r} (shapes_parser, local or api)")
