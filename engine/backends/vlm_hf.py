"""LLaVA-1.5 through transformers: the reference (and CPU) VLM backend.

Loads a llava-hf style directory (``llava-hf/llava-1.5-13b-hf`` or the tiny zoo's) with
``AutoProcessor`` and ``LlavaForConditionalGeneration``, offline. Every prompt is wrapped in
the checkpoint's chat template, ``USER: <image>\\n{prompt} ASSISTANT:`` for LLaVA-1.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, ModelLoadError
from ..models.checks import require_files

if TYPE_CHECKING:
    from transformers import LlavaForConditionalGeneration, ProcessorMixin

ROLE = "vlm"
FORMAT = "llava-hf LlavaForConditionalGeneration"
EXPECTED_FILES = (
    "config.json",
    "model.safetensors|model.safetensors.index.json",
    "tokenizer.json|tokenizer.model",
    "preprocessor_config.json|processor_config.json",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Checkpoints without a chat template get the LLaVA-1.5 conversation format.
LLAVA15_FORMAT = "USER: <image>\n{prompt} ASSISTANT:"


class HFLlavaVLM:
    """The ``VLM`` protocol on a transformers Llava model; greedy generation and
    teacher-forced scoring, each a single padded batch (or chunks of ``max_batch_size``)."""

    def __init__(
        self,
        model: "LlavaForConditionalGeneration",
        processor: "ProcessorMixin",
        device: torch.device,
        max_batch_size: int | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self.max_batch_size = max_batch_size

    @classmethod
    def option_types(cls) -> dict[str, Any]:
        """The options ``load`` takes, name -> type: checked by ``int_engine.models.load``
        before anything is loaded."""
        return {"max_batch_size": int | None}

    @classmethod
    def load(
        cls, path: str | Path, device: str = "cpu", dtype: str = "float32", **options
    ) -> "HFLlavaVLM":
        """Load a llava-hf directory. Options: ``max_batch_size`` (rows per forward pass,
        default 256: one scoring call of thousands of rows runs in passes of this size, so
        memory does not grow with the number of candidates; None = all rows in one pass)."""
        p = require_files(ROLE, path, EXPECTED_FILES, FORMAT)
        if dtype not in DTYPES:
            raise ConfigError(f"{ROLE}: unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        max_batch_size = options.pop("max_batch_size", 256)
        if options:
            raise ConfigError(f"{ROLE}: unknown option(s) for {FORMAT}: {', '.join(sorted(options))}")
        if max_batch_size is not None and int(max_batch_size) < 1:
            raise ConfigError(f"{ROLE}: max_batch_size must be >= 1, got {max_batch_size}")
        # Imported here so that merely importing the backends does not pay transformers' import.
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        try:
            processor = AutoProcessor.from_pretrained(p, local_files_only=True)
            model, info = LlavaForConditionalGeneration.from_pretrained(
                p, local_files_only=True, dtype=DTYPES[dtype], output_loading_info=True
            )
            # A missing weight would be silently random-initialised: refuse it instead.
            if info["missing_keys"]:
                raise ValueError(f"weights missing from the checkpoint: {sorted(info['missing_keys'])[:5]}")
            model = model.to(torch.device(device)).eval()
        except Exception as err:
            raise ModelLoadError(f"{ROLE}: cannot load {FORMAT} from {p}: {err}") from err
        if processor.tokenizer.pad_token is None:
            processor.tokenizer.pad_token = processor.tokenizer.eos_token
        return cls(model, processor, torch.device(device), None if max_batch_size is None else int(max_batch_size))

    # ---- text ------------------------------------------------------------------------------

    def chat_text(self, prompt: str) -> str:
        """The full model input for one user prompt about one image, up to "ASSISTANT:"."""
        return llava_chat_text(self.processor, prompt)

    def _answer_lengths(self, prompt_texts: list[str], full_texts: list[str]) -> list[int]:
        """How many tokens of each full text belong to its answer.

        The answer is tokenised inside the full text, so it gets the leading-space pieces
        ("▁frog") the model would generate after "ASSISTANT:", not those of a lone "frog".
        The prompt's tokens are the shared prefix of the two tokenisations; images are left
        out because the image tokens sit before the answer and do not change its tokens.
        """
        return [len(ids) for ids in answer_token_ids(self.tokenizer, prompt_texts, full_texts)]

    def _inputs(self, images: Sequence[np.ndarray], texts: list[str], padding_side: str) -> dict:
        """What ``processor(images=..., text=...)`` gives for the rows, with each distinct image
        (by identity) resized and normalised once: scoring sends every view once per candidate
        and generation once per prompt, and the image processor was half of a scoring call."""
        firsts, inverse = distinct_rows(images)
        pil = [Image.fromarray(_check_image(images[j], j)) for j in firsts]
        if hasattr(self.processor, "replace_image_token") and hasattr(self.processor, "image_processor"):
            pixels = self.processor.image_processor(pil, return_tensors="pt")["pixel_values"]
            # LLaVA-1.5 resizes every image to one size: one "<image>" expansion serves all rows.
            expanded = self.processor.replace_image_token({"pixel_values": pixels}, image_idx=0)
            token = self.processor.image_token
            batch = dict(self.tokenizer([t.replace(token, expanded) for t in texts], padding=True,
                                        padding_side=padding_side, return_tensors="pt"))
            batch["pixel_values"] = pixels[inverse]
        else:  # another processor: its own call on every row
            batch = self.processor(images=[pil[u] for u in inverse], text=texts, padding=True,
                                   padding_side=padding_side, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        return batch

    def _chunks(self, n: int) -> list[slice]:
        step = self.max_batch_size or max(n, 1)
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    # ---- the protocol ----------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, images: Sequence[np.ndarray], prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy answers, one string per (image, prompt) pair, stripped of special tokens
        and surrounding spaces. Left padding, so every row's answer starts at the end."""
        _check_lengths(images, prompts, "prompts")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        texts = chat_texts(self.chat_text, prompts)
        answers: list[str] = []
        for rows in self._chunks(len(texts)):
            batch = self._inputs(images[rows], texts[rows], padding_side="left")
            out = self.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            new_tokens = out[:, batch["input_ids"].shape[1]:]
            decoded = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            answers += [a.strip() for a in decoded]
        return answers

    @torch.inference_mode()
    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Mean log-probability of ``answers[j]``'s tokens given ``images[j]`` and the
        chat-templated ``prompts[j]``, teacher forced: float32 [len(answers)], each <= 0.

        An answer is stripped and joined to "ASSISTANT:" by one space, as the model writes
        it. Rows are left padded with position ids counted from each row's first real
        token, so a row's score does not depend on the other rows in its batch.
        """
        if not answers:
            _check_lengths(images, prompts, "prompts")
            return np.zeros(0, np.float32)
        prompt_texts, full_texts = scoring_texts(self.chat_text, images, prompts, answers)
        lengths = self._answer_lengths(prompt_texts, full_texts)

        scores = np.zeros(len(answers), np.float32)
        for rows in self._chunks(len(answers)):
            scores[rows] = self._score_rows(images[rows], full_texts[rows], lengths[rows])
        return scores

    def _image_features(self, images: Sequence[np.ndarray], pixel_values: torch.Tensor):
        """The vision tower and projector run once per distinct image (by identity): scoring
        sends each view with every candidate, and it must not be encoded once per row."""
        firsts, inverse = distinct_rows(images)
        cfg = self.model.config
        encoded = self.model.model.get_image_features(
            pixel_values=pixel_values[firsts], vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy, return_dict=True,
        )
        encoded.pooler_output = [encoded.pooler_output[u] for u in inverse]
        return encoded

    def _score_rows(self, images: Sequence[np.ndarray], texts: list[str], lengths: list[int]) -> np.ndarray:
        batch = self._inputs(images, texts, padding_side="left")
        features = self._image_features(images, batch.pop("pixel_values"))
        mask = batch["attention_mask"]
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        longest = max(lengths)
        # Left padding puts every answer at the end: only the last longest+1 positions'
        # logits are needed, which keeps [rows, T, vocab] out of memory for the 32k vocab.
        logits = self.model(**batch, mm_encoder_outputs={"image": features}, position_ids=position_ids,
                            logits_to_keep=longest + 1).logits
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [R, longest, V]
        targets = batch["input_ids"][:, -longest:]  # [R, longest]
        token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        n = torch.tensor(lengths, device=token_lp.device)
        is_answer = torch.arange(longest, device=token_lp.device)[None, :] >= (longest - n)[:, None]
        mean = (token_lp * is_answer).sum(-1) / n
        return mean.cpu().numpy().astype(np.float32)


def llava_chat_text(processor, prompt: str) -> str:
    """One user prompt about one image in the checkpoint's chat template, up to "ASSISTANT:"
    (LLaVA-1.5's conversation format when the checkpoint has no template)."""
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return LLAVA15_FORMAT.format(prompt=prompt)


def chat_texts(chat_text, prompts: Sequence[str]) -> list[str]:
    """``chat_text`` of every prompt, each distinct prompt templated once: a call repeats a few
    prompts over hundreds of rows, and the Jinja template costs more than the tokenizer."""
    templated = {p: chat_text(p) for p in dict.fromkeys(prompts)}
    return [templated[p] for p in prompts]


def distinct_rows(images: Sequence[np.ndarray]) -> tuple[list[int], list[int]]:
    """The rows holding each distinct image (by identity, first occurrences in order) and, per
    row, the index of its image among them: a view sent with many candidates is one image."""
    index: dict[int, int] = {}
    firsts: list[int] = []
    inverse = []
    for j, image in enumerate(images):
        if id(image) not in index:
            index[id(image)] = len(firsts)
            firsts.append(j)
        inverse.append(index[id(image)])
    return firsts, inverse


def answer_token_ids(tokenizer, prompt_texts: list[str], full_texts: list[str]) -> list[list[int]]:
    """Each answer's token ids: the full text's tokens after the prefix it shares with the
    prompt's tokenisation (so " frog" after "ASSISTANT:" is "▁frog", as generated)."""
    prompts = tokenizer(prompt_texts)["input_ids"]
    fulls = tokenizer(full_texts)["input_ids"]
    answers = []
    for j, (pre, full) in enumerate(zip(prompts, fulls)):
        shared = 0
        while shared < min(len(pre), len(full)) and pre[shared] == full[shared]:
            shared += 1
        if shared == len(full):
            raise ValueError(f"answer {j} has no tokens of its own after the prompt: {full_texts[j]!r}")
        answers.append(list(full[shared:]))
    return answers


def scoring_texts(chat_text, images: Sequence[np.ndarray], prompts: Sequence[str], answers: Sequence[str]) -> tuple[list[str], list[str]]:
    """Check a scoring request and build, per row, the chat text up to "ASSISTANT:" and the same
    text with the stripped answer joined by one space (as the model would write it)."""
    _check_lengths(images, prompts, "prompts")
    _check_lengths(images, answers, "answers")
    answers = [a.strip() for a in answers]
    for j, a in enumerate(answers):
        if not a:
            raise ValueError(f"answer {j} is empty: a score needs at least one answer token")
    prompt_texts = chat_texts(chat_text, prompts)
    return prompt_texts, [f"{p} {a}" for p, a in zip(prompt_texts, answers)]


def _check_image(image: np.ndarray, j: int) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image {j} must be uint8 [H, W, 3] RGB, got {got}")
    return np.ascontiguousarray(image)


def _check_lengths(images: Sequence, other: Sequence, name: str) -> None:
    if len(images) != len(other):
        raise ValueError(f"got {len(images)} images but {len(other)} {name}")
