"""Every captioner behind one interface: ``captioner.caption(images, metas) -> list[str]``.

- ``ShapesOracle``: the Shapes world's exhaustive caption from the scene graph (the toy teacher);
  ``References``: the first reference caption of each image.
- ``VLVCaptionerBackend``: a trained VLV captioner folder (``finetune_stage2``), batched beam search.
- ``LocalVLM``: an open VLM through transformers, batched on the GPU: Florence-2 (native class, task
  prompt such as ``<MORE_DETAILED_CAPTION>``) or a chat VLM (``AutoModelForImageTextToText``:
  Qwen2.5-VL, LLaVA-1.5, ...) with the paper's captioning prompt.
- ``APICaptioner``: an OpenAI-compatible chat-completions endpoint, only when the user configures a
  key; rate limited, retried with backoff, failures returned (never silently dropped).

``make_teacher(cfg, ...)`` picks the teacher backend from the ``teacher`` config section.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import numpy as np
import torch

from vlv.models.hub import require_local

log = logging.getLogger("vlv")

# The paper's Gemini 2.0 Flash captioning prompt (Fig. 7), verbatim.
PAPER_PROMPT = (
    "You are a perceptive visual assistant. Given an image, your task is to describe it in exhaustive detail. "
    "Your description should include the overall scene and setting, objects present and their relative positions, "
    "people or animals (including appearance, clothing, expressions, and poses), colors, textures, lighting, "
    "shadows, any actions occurring, and the mood or atmosphere. Describe what you see without summarizing or "
    "inferring beyond the visible content. Provide only the caption without any additional text or line breaks."
)


class CaptionFailure(RuntimeError):
    """One image could not be captioned (e.g. the API kept failing); the caller records it."""


class ShapesOracle:
    """The Shapes world's exhaustive teacher caption from the scene graph stored with each image (toy)."""

    name = "shapes_oracle"

    def __init__(self, shapes_cfg: dict):
        from vlv.shapes.world import WorldSpec

        self.spec = WorldSpec.from_config(shapes_cfg)

    def caption(self, images: np.ndarray, metas: list[dict]) -> list[str]:
        from vlv.shapes.captions import teacher_caption
        from vlv.shapes.world import Scene

        if any("scene" not in m for m in metas):
            raise ValueError("the Shapes oracle needs scene graphs beside the images (Shapes shards)")
        return [teacher_caption(Scene.from_json(m["scene"]), self.spec) for m in metas]


class References:
    """The first reference caption stored with each image (any data set with ``captions`` metadata)."""

    name = "reference"

    def caption(self, images: np.ndarray, metas: list[dict]) -> list[str]:
        return [m["captions"][0] for m in metas]


class VLVCaptionerBackend:
    def __init__(self, path: str, num_beams: int, max_new_tokens: int, device, batch_size: int = 32):
        from vlv.models.vlv_captioner import VLVCaptioner

        self.model = VLVCaptioner.from_pretrained(path).to(device)
        self.device = device
        self.num_beams, self.max_new_tokens, self.batch_size = num_beams, max_new_tokens, batch_size
        self.name = str(path)

    def caption(self, images: np.ndarray, metas: list[dict] | None = None) -> list[str]:
        out: list[str] = []
        for i in range(0, len(images), self.batch_size):
            batch = images[i : i + self.batch_size]
            pv = self.model.encoder.preprocess(batch).to(self.device)
            out += self.model.generate(pv, num_beams=self.num_beams, max_new_tokens=self.max_new_tokens, images=batch)
        return out


def load_vlm_processor(local, model_type: str):
    """The folder's processor through ``AutoProcessor``; for the Qwen2-VL family without torchvision, the
    same processor class without its video processor.

    Qwen2-VL's and Qwen2.5-VL's processors hold a video processor that transformers builds only with
    torchvision, which this project cannot install beside its torch; captioning passes images only,
    so the image processor (its PIL backend), the tokenizer and the chat template are all it needs.
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(local)
    except ImportError as e:
        if "torchvision" not in str(e).lower() or model_type not in ("qwen2_vl", "qwen2_5_vl"):
            raise
        from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

        base = Qwen2_5_VLProcessor if model_type == "qwen2_5_vl" else Qwen2VLProcessor

        class ImagesOnly(base):
            # the sub-processors come from __init__'s parameters: without video_processor, none is loaded
            def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
                super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

        logging.getLogger("vlv").info("%s: %s without its video processor (no torchvision)", local, base.__name__)
        return ImagesOnly.from_pretrained(local)


class LocalVLM:
    """An open VLM from a local folder or cached hub id, run through transformers (no remote code)."""

    def __init__(self, model: str, prompt: str, max_new_tokens: int, device, num_beams: int = 1, batch_size: int = 8):
        from transformers import AutoConfig

        local = require_local(model, "captioning VLM")
        model_type = AutoConfig.from_pretrained(local).model_type
        self.florence = model_type == "florence2"
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        if self.florence:
            from transformers import Florence2ForConditionalGeneration

            self.model = Florence2ForConditionalGeneration.from_pretrained(local, dtype=dtype)
            # Florence-2 reads a task token, not an instruction (the paper's prompt is for chat VLMs)
            self.prompt = prompt if prompt.startswith("<") else "<MORE_DETAILED_CAPTION>"
        else:
            from transformers import AutoModelForImageTextToText

            self.model = AutoModelForImageTextToText.from_pretrained(local, dtype=dtype)
            self.prompt = prompt
        self.model.to(device).eval()
        self.processor = load_vlm_processor(local, model_type)
        if not self.florence and getattr(self.processor, "tokenizer", None) is not None:
            self.processor.tokenizer.padding_side = "left"  # batched generation of a decoder-only LM
        self.device, self.dtype = device, dtype
        self.max_new_tokens, self.num_beams, self.batch_size = max_new_tokens, num_beams, batch_size
        self.name = str(model)

    def _text(self, prompt: str) -> str:
        if self.florence:
            return prompt
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def caption(self, images: np.ndarray, metas: list[dict] | None = None) -> list[str]:
        return self.generate(images, [self.prompt] * len(images))

    @torch.no_grad()
    def generate(self, images: np.ndarray, prompts: list[str]) -> list[str]:
        """The model's reply to each (image, prompt), whitespace collapsed; batched."""
        from PIL import Image

        out: list[str] = []
        for i in range(0, len(images), self.batch_size):
            batch = [Image.fromarray(np.asarray(im)) for im in images[i : i + self.batch_size]]
            texts = [self._text(t) for t in prompts[i : i + self.batch_size]]
            inputs = self.processor(text=texts, images=batch, return_tensors="pt", padding=True)
            inputs = {
                k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
                for k, v in inputs.items()
            }
            ids = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False
            )
            if not self.florence:  # a decoder-only LM returns prompt + answer
                ids = ids[:, inputs["input_ids"].shape[1] :]
            texts = self.processor.batch_decode(ids, skip_special_tokens=True)
            out += [" ".join(t.split()) for t in texts]
        return out


@dataclass
class APISettings:
    base_url: str
    model: str
    key_env: str
    requests_per_minute: float
    max_retries: int
    timeout_s: float
    max_tokens: int


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _origin(url: str) -> tuple:
    u = urllib.parse.urlsplit(url)
    return u.scheme, u.hostname, u.port or {"http": 80, "https": 443}.get(u.scheme)


class _KeyStaysWithItsHost(urllib.request.HTTPRedirectHandler):
    """urllib repeats every header on a redirect, the key included, to wherever it points: here a
    redirect to another origin (scheme, host or port) goes on without the ``Authorization`` header."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_KeyStaysWithItsHost)


def check_base_url(base_url: str) -> str:
    """An API base URL the key may be sent to: https, or plain http to this machine only (a local server)."""
    u = urllib.parse.urlsplit(base_url)
    if u.scheme == "https" or (u.scheme == "http" and u.hostname in LOOPBACK):
        return base_url
    raise SystemExit(
        f"api.base_url {base_url!r}: the key is sent only over https (plain http only to 127.0.0.1 or localhost)"
    )


class ChatAPI:
    """An OpenAI-compatible ``/chat/completions`` endpoint: ``complete(content) -> str``.

    Requests are spaced to ``requests_per_minute``; a 429, 5xx or network error is retried with
    exponential backoff up to ``max_retries`` times; then the request raises ``CaptionFailure``, which
    the caller records. The key is read from the environment variable the config names, never from
    the config itself; it goes only over https (or to a server on this machine) and is not repeated
    on a redirect to another origin.
    """

    def __init__(
        self, settings: APISettings, purpose: str = "the API teacher", alternative: str = "teacher.backend: local"
    ):
        check_base_url(settings.base_url)
        key = os.environ.get(settings.key_env)
        if not key:
            raise SystemExit(
                f"{purpose} needs a key: set the environment variable {settings.key_env} "
                f"(the config never holds keys), or choose {alternative}"
            )
        self.s, self.key = settings, key
        self._last = 0.0

    def _wait_turn(self) -> None:
        gap = 60.0 / self.s.requests_per_minute
        now = time.monotonic()
        if now - self._last < gap:
            time.sleep(gap - (now - self._last))
        self._last = time.monotonic()

    def complete(self, content: str | list[dict]) -> str:
        """The reply to one user message (text, or OpenAI content parts), stripped."""
        body = {
            "model": self.s.model,
            "max_tokens": self.s.max_tokens,
            "messages": [{"role": "user", "content": content}],
        }
        url = self.s.base_url.rstrip("/") + "/chat/completions"
        last_error = ""
        for attempt in range(self.s.max_retries + 1):
            self._wait_turn()
            req = urllib.request.Request(
                url,
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"},
            )
            try:
                with _OPENER.open(req, timeout=self.s.timeout_s) as r:
                    reply = json.loads(r.read())
                text = reply["choices"][0]["message"]["content"]
                if not isinstance(text, str) or not text.strip():
                    raise CaptionFailure("empty reply")
                return text.strip()
            except urllib.error.HTTPError as e:
                last_error = f"HTTP {e.code}"
                if e.code not in (408, 409, 429) and e.code < 500:
                    break  # a client error will not get better by retrying
            except (urllib.error.URLError, TimeoutError, OSError, KeyError, IndexError, ValueError) as e:
                last_error = f"{type(e).__name__}: {e}"
            if attempt < self.s.max_retries:
                time.sleep(min(30.0, 0.5 * 2**attempt))
        raise CaptionFailure(f"{last_error} after {attempt + 1} attempt(s)")


class APICaptioner:
    """A captioner behind an OpenAI-compatible endpoint (``ChatAPI``): one request per image, the
    image sent as a PNG data URL beside the prompt."""

    def __init__(
        self,
        settings: APISettings,
        prompt: str,
        purpose: str = "the API teacher",
        alternative: str = "teacher.backend: local",
    ):
        self.api, self.prompt = ChatAPI(settings, purpose, alternative), prompt
        self.name = f"api:{settings.model}"

    def ask(self, image: np.ndarray, prompt: str) -> str:
        """The reply to one (image, prompt), whitespace collapsed."""
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.asarray(image)).save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        reply = self.api.complete([{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}])
        return " ".join(reply.split())

    def caption_one(self, image: np.ndarray) -> str:
        return self.ask(image, self.prompt)

    def caption(self, images: np.ndarray, metas: list[dict] | None = None) -> list[str]:
        return [self.caption_one(im) for im in images]


def api_settings(api_cfg: dict, model: str, max_tokens: int) -> APISettings:
    """``APISettings`` from a config ``api`` block (teacher.api, vqa.api) and the model to call."""
    return APISettings(
        base_url=api_cfg["base_url"],
        model=model,
        key_env=api_cfg["key_env"],
        requests_per_minute=api_cfg["requests_per_minute"],
        max_retries=api_cfg["max_retries"],
        timeout_s=api_cfg["timeout_s"],
        max_tokens=max_tokens,
    )


def make_teacher(teacher_cfg: dict, shapes_cfg: dict | None, device):
    backend = teacher_cfg["backend"]
    if backend == "shapes_oracle":
        if shapes_cfg is None:
            raise SystemExit("teacher.backend shapes_oracle needs the Shapes world (toy profile)")
        return ShapesOracle(shapes_cfg)
    if backend == "local":
        return LocalVLM(
            teacher_cfg["model"],
            teacher_cfg["prompt"] or PAPER_PROMPT,
            teacher_cfg["max_new_tokens"],
            device,
            batch_size=teacher_cfg["batch_size"],
        )
    if backend == "api":
        settings = api_settings(teacher_cfg["api"], teacher_cfg["model"], teacher_cfg["max_new_tokens"])
        return APICaptioner(settings, teacher_cfg["prompt"] or PAPER_PROMPT)
    raise SystemExit(f"unknown teacher.backend {backend!r} (shapes_oracle, local or api)")
