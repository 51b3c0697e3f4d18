"""VLM explainers through transformers: ``AutoModelForImageTextToText`` + ``AutoProcessor``
and the checkpoint's chat template (``apply_chat_template(..., tokenize=True,
return_dict=True)``).

Covered: LLaVA-OneVision (``llava-hf/llava-onevision-qwen2-0.5b-ov-hf``, the default), SmolVLM
/ Idefics3 (``HuggingFaceTB/SmolVLM-256M-Instruct``), Qwen2-VL / Qwen2.5-VL (``bbox_2d`` JSON
parsed back to pixels), Florence-2 (``florence-community/*``: a task prompt per crop, no chat
template). Moondream2 runs its own code: only with ``trust_remote_code=True`` (CLI
``--trust-remote-code``), and it is known to break on transformers 5; the error then names the
workaround (serve it with Ollama and use ``openai:http://127.0.0.1:11434/v1#moondream``).

transformers' video processors need torchvision. Explanations never send video, so when
torchvision is missing the processor is built from the folder's image processor, tokenizer and
chat template with no video processor.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.errors import ModelNotAvailableError
from anomalens.explain.prompts import FLORENCE_TASK, Answer, parse_answer, parse_bboxes
from anomalens.explain.vlm import VLMExplainer, VLMRequest

__all__ = ["MOONDREAM_HINT", "HFExplainer", "load_vlm"]

logger = logging.getLogger(__name__)

MOONDREAM_HINT = (
    "Moondream2 runs its own model code, which breaks on transformers 5. Workarounds: serve it "
    "with Ollama (`ollama pull moondream`) and use --explain "
    "openai:http://127.0.0.1:11434/v1#moondream, or run anomalens in an environment with "
    "transformers<5"
)


def _processor_without_video(source: str, local_files_only: bool) -> Any:
    """The processor of a folder/hub id built without its video processor (no torchvision)."""
    import transformers
    from huggingface_hub import hf_hub_download
    from transformers import AutoImageProcessor, AutoTokenizer

    def read(name: str) -> str | None:
        path = Path(source) / name
        if path.is_file():
            return path.read_text(encoding="utf-8")
        try:
            found = hf_hub_download(source, name, local_files_only=local_files_only)
        except Exception:
            return None
        return Path(found).read_text(encoding="utf-8")

    config = json.loads(read("processor_config.json") or "{}")
    name = config.pop("processor_class", None)
    if name is None:
        raise ModelNotAvailableError(f"{source}: no processor_config.json naming the processor")
    cls = getattr(transformers, name)
    template = read("chat_template.jinja")
    if template is None and (raw := read("chat_template.json")):
        template = json.loads(raw).get("chat_template")
    kwargs = {k: v for k, v in config.items() if not isinstance(v, dict)}

    class NoVideo(cls):  # the base class refuses a missing video processor
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    NoVideo.__name__ = cls.__name__
    parts = dict(
        image_processor=AutoImageProcessor.from_pretrained(
            source, local_files_only=local_files_only
        ),
        tokenizer=AutoTokenizer.from_pretrained(source, local_files_only=local_files_only),
    )
    if "video_processor" in cls.get_attributes():
        parts["video_processor"] = None
    return NoVideo(**parts, chat_template=template, **kwargs)


def _load_processor(source: str, local_files_only: bool, trust_remote_code: bool) -> Any:
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(
            source, local_files_only=local_files_only, trust_remote_code=trust_remote_code
        )
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise
        logger.debug("%s: building the processor without video (%s)", source, exc)
        return _processor_without_video(source, local_files_only)


def load_vlm(
    model_id: str, precision: str = "fp32", trust_remote_code: bool = False
) -> tuple[Any, Any, str]:
    """``(model, processor, family)`` of a hub id or local folder, in eval mode.

    ``family`` is the config's ``model_type`` (``llava_onevision``, ``idefics3``, ``qwen2_vl``,
    ``qwen2_5_vl``, ``florence2``, ``smolvlm``, ... or ``moondream``). Raises
    ModelNotAvailableError when it cannot be loaded, naming what to do.
    """
    import torch

    from anomalens.backbones.base import resolve_precision
    from anomalens.backbones.hf import _fetch

    dtype = torch.bfloat16 if resolve_precision(precision) == "bf16" else torch.float32
    if "moondream" in model_id.lower():
        return _load_moondream(model_id, dtype, trust_remote_code)

    def load(source: str, local_files_only: bool):
        from transformers import AutoConfig, AutoModelForImageTextToText

        try:
            config = AutoConfig.from_pretrained(
                source, local_files_only=local_files_only, trust_remote_code=trust_remote_code
            )
        except ValueError as exc:
            if "trust_remote_code" in str(exc):
                raise ModelNotAvailableError(
                    f"{model_id!r} runs its own model code; pass --trust-remote-code "
                    "(trust_remote_code=True) if you trust it"
                ) from exc
            raise
        model = AutoModelForImageTextToText.from_pretrained(
            source,
            config=config,
            dtype=dtype,
            local_files_only=local_files_only,
            trust_remote_code=trust_remote_code,
        )
        processor = _load_processor(source, local_files_only, trust_remote_code)
        return model.eval(), processor, config.model_type

    return _fetch(load, model_id, "hf", "VLM")


def _load_moondream(model_id: str, dtype: Any, trust_remote_code: bool) -> tuple[Any, Any, str]:
    if not trust_remote_code:
        raise ModelNotAvailableError(
            f"{model_id!r} (Moondream) needs --trust-remote-code (trust_remote_code=True): it "
            f"runs the model repository's own code. {MOONDREAM_HINT}"
        )
    from anomalens.backbones.hf import _fetch

    def load(source: str, local_files_only: bool):
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(
                source, trust_remote_code=True, dtype=dtype, local_files_only=local_files_only
            )
        except (OSError, TimeoutError):
            raise
        except Exception as exc:  # remote code failing on this transformers version
            raise ModelNotAvailableError(
                f"{model_id!r} did not load ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}). {MOONDREAM_HINT}"
            ) from exc
        return model.eval(), None, "moondream"

    return _fetch(load, model_id, "hf", "VLM")


class HFExplainer(VLMExplainer):
    """Explainer asking a transformers VLM (spec ``hf:HUB_ID`` or ``hf:/folder``); loads on
    first use. ``precision``: fp32, bf16 or auto (bf16 only where the CPU computes it
    natively); other options as :class:`~anomalens.explain.vlm.VLMExplainer`."""

    name = "hf"

    def __init__(
        self,
        model: str,
        *,
        precision: str = "fp32",
        trust_remote_code: bool = False,
        **options: Any,
    ) -> None:
        from anomalens.backbones.base import check_precision

        super().__init__(model, **options)
        self.precision = check_precision(precision)
        self.trust_remote_code = trust_remote_code
        self._loaded: tuple[Any, Any, str] | None = None

    def load(self) -> HFExplainer:
        """Load the model and processor now (otherwise on the first question)."""
        if self._loaded is None:
            self._loaded = load_vlm(self.model, self.precision, self.trust_remote_code)
            self.family = self._loaded[2]
        return self

    def ask(self, request: VLMRequest) -> Answer:
        self.load()
        model, processor, family = self._loaded
        if family == "moondream":
            return self._ask_moondream(model, request)
        if family == "florence2":
            return self._ask_florence(model, processor, request)
        text, input_size = self.generate(request.images, request.prompt)
        answer = parse_answer(text, request.n_regions)
        if family in ("qwen2_vl", "qwen2_5_vl"):
            answer.boxes = parse_bboxes(text, family, request.images[0].shape[:2], input_size)
        return answer

    def generate(self, images: list[np.ndarray], prompt: str) -> tuple[str, tuple | None]:
        """The decoded answer to ``prompt`` about ``images`` (chat template) and, for Qwen
        models, the size the first image was resized to."""
        import torch
        from PIL import Image

        model, processor, _ = self._loaded
        content = [{"type": "image", "image": Image.fromarray(img)} for img in images]
        content.append({"type": "text", "text": prompt})
        inputs = processor.apply_chat_template(
            [{"role": "user", "content": content}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        dtype = next(model.parameters()).dtype
        inputs = {
            k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in inputs.items()
        }
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        text = processor.decode(new, skip_special_tokens=True).strip()
        input_size = None
        grid = inputs.get("image_grid_thw")
        if grid is not None:
            patch = getattr(processor.image_processor, "patch_size", 14)
            input_size = (int(grid[0][1]) * patch, int(grid[0][2]) * patch)
        return text, input_size

    def _ask_florence(self, model: Any, processor: Any, request: VLMRequest) -> Answer:
        """Florence-2: the task prompt on each crop (image 1 when there is no region)."""
        import torch
        from PIL import Image

        crops = request.images[1 : 1 + request.n_regions] or request.images[:1]
        texts = []
        for crop in crops:
            inputs = processor(
                text=FLORENCE_TASK, images=Image.fromarray(crop), return_tensors="pt"
            )
            with torch.inference_mode():
                ids = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            raw = processor.batch_decode(ids, skip_special_tokens=False)[0]
            parsed = processor.post_process_generation(
                raw, task=FLORENCE_TASK, image_size=(crop.shape[1], crop.shape[0])
            )
            texts.append(str(parsed.get(FLORENCE_TASK, raw)).strip())
        answer = Answer("\n".join(f"Region {k}: {t}" for k, t in enumerate(texts, 1)))
        answer.regions = {k: t for k, t in enumerate(texts, 1)} if request.n_regions else {}
        if not request.n_regions:
            answer.text = texts[0]
        return answer

    def _ask_moondream(self, model: Any, request: VLMRequest) -> Answer:
        from PIL import Image

        reply = model.query(Image.fromarray(request.images[0]), request.prompt)
        text = reply.get("answer", "") if isinstance(reply, dict) else str(reply)
        return parse_answer(text, request.n_regions)
