"""What both LLaVA backends share: the chat text of a prompt, the answer's own tokens, the rows of a
call that hold the same image, the checks of a request, and the check that float32 weights fit a GPU.

The chat format. By default (``chat_format: llava_v1``) a LLaVA-1.5 checkpoint gets the
conversation its authors trained it on and the INT authors ran it with (their ProMaC code uses
LLaVA's ``conv_mode`` "llava_v1"): the system prompt, then ``" USER: <image>\n{prompt} ASSISTANT:"``,
the answer after one space (its own tokens are what is scored), tokenised as LLaVA's
``tokenizer_image_token`` does (``llava_tokens.token_ids``: the text split at "<image>", each piece tokenised alone).
llava-hf's chat template drops the system prompt and tokenises the text in one piece (a token
fewer after the image), so the model would see a prompt neither its training nor the authors'
runs had. ``chat_format: checkpoint`` uses the checkpoint's own template instead.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, ModelLoadError

# LLaVA's "llava_v1" conversation (Vicuna v1's system prompt; separators " " and "</s>").
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAVA_V1_FORMAT = LLAVA_V1_SYSTEM + " USER: {image}\n{prompt} ASSISTANT:"
# Checkpoints without a chat template of their own get llava-hf's LLaVA-1.5 text ("checkpoint" format).
LLAVA15_FORMAT = "USER: <image>\n{prompt} ASSISTANT:"
CHAT_FORMATS = ("llava_v1", "checkpoint")


def default_chat_format(config) -> str:
    """The chat format a checkpoint gets by default: "llava_v1" for LLaVA-1.5 (a ``llava`` model on
    a Llama language model, as LLaVA-1.5's Vicuna is), "checkpoint" for any other: the authors'
    format only where it is theirs."""
    text = getattr(config, "text_config", None)
    is_llava15 = getattr(config, "model_type", None) == "llava" and getattr(text, "model_type", None) == "llama"
    return "llava_v1" if is_llava15 else "checkpoint"


def chat_format_of(role: str, chat_format: str | None, config) -> str:
    """The chat format a backend uses: ``chat_format`` if given (checked), else ``default_chat_format``."""
    if chat_format is None:
        return default_chat_format(config)
    if chat_format not in CHAT_FORMATS:
        raise ConfigError(f"{role}: unknown chat_format {chat_format!r}; expected one of {', '.join(CHAT_FORMATS)}")
    return chat_format


def llava_chat_text(processor, prompt: str, chat_format: str = "llava_v1") -> str:
    """One user prompt about one image, up to "ASSISTANT:": LLaVA's "llava_v1" conversation, or with
    ``chat_format`` "checkpoint" the checkpoint's chat template (llava-hf's LLaVA-1.5 text when it
    has none)."""
    if chat_format == "llava_v1":
        return LLAVA_V1_FORMAT.format(image=getattr(processor, "image_token", "<image>"), prompt=prompt)
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return LLAVA15_FORMAT.format(prompt=prompt)


def join_answer(prompt_text: str, answer: str) -> str:
    """A scoring row's text: the chat text, one space and the stripped answer. The answer's own
    tokens are scored (SPEC step 4); the end of turn that would follow it is not (its log-prob is
    the model's wish to stop there, not the name's evidence)."""
    return f"{prompt_text} {answer.strip()}"


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


def scoring_texts(
    chat_text, images: Sequence[np.ndarray], prompts: Sequence[str], answers: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Check a scoring request and build, per row, the chat text up to "ASSISTANT:" and the same
    text with the stripped answer joined by one space (``join_answer``: as the model would write it)."""
    check_lengths(images, prompts, "prompts")
    check_lengths(images, answers, "answers")
    answers = [a.strip() for a in answers]
    for j, a in enumerate(answers):
        if not a:
            raise ValueError(f"answer {j} is empty: a score needs at least one answer token")
    prompt_texts = chat_texts(chat_text, prompts)
    return prompt_texts, [join_answer(p, a) for p, a in zip(prompt_texts, answers)]


def check_image(image: np.ndarray, j: int) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image {j} must be uint8 [H, W, 3] RGB, got {got}")
    return np.ascontiguousarray(image)


def check_lengths(images: Sequence, other: Sequence, name: str) -> None:
    if len(images) != len(other):
        raise ValueError(f"got {len(images)} images but {len(other)} {name}")


# ---- float32 weights on a GPU -------------------------------------------------------------------

# Bytes a weight takes in each dtype the backends load.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def check_weights_fit(parameters: int, dtype: str, device_bytes: int, share: float = 1.0, gpus: int = 1) -> None:
    """Raise ModelLoadError, with the arithmetic, when ``parameters`` weights in ``dtype`` (split over
    ``gpus``) take more than ``share`` of a GPU's ``device_bytes``: what the weights alone need,
    before any activation or KV cache. GB are 10^9 bytes.

    LLaVA-1.5-13B in float32 at vLLM's 0.5 share of an 80 GB GPU: 13.35e9 x 4 B = 53.4 GB > 40 GB."""
    need, room = parameters * DTYPE_BYTES[dtype], share * device_bytes
    if need / gpus <= room:
        return
    split = f" / {gpus} GPUs = {need / gpus / 1e9:.1f} GB" if gpus > 1 else ""
    raise ModelLoadError(
        f"vlm: {parameters / 1e9:.2f}e9 parameters x {DTYPE_BYTES[dtype]} bytes = {need / 1e9:.1f} GB{split} > "
        f"{share:g} x {device_bytes / 1e9:.1f} GB of GPU memory: the {dtype} weights alone do not fit; "
        "load it in float16 or bfloat16 (dtype: auto is float16 on CUDA)"
    )


def checkpoint_parameters(path: Path) -> int:
    """The parameters a llava-hf directory's safetensors files hold (``model.safetensors``, or the
    shards its index names), read off the files' headers: no weight is read."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    return sum(_safetensors_parameters(path / name) for name in files)


def _safetensors_parameters(file: Path) -> int:
    """Elements of every tensor in one safetensors file: its header is a little-endian u64 length,
    then that many bytes of JSON, name -> {dtype, shape, data_offsets}."""
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return sum(int(np.prod(t["shape"], dtype=np.int64)) for name, t in header.items() if name != "__metadata__")


def refuse_float32_overflow(path: Path, device: str, dtype: str, share: float = 1.0, gpus: int = 1) -> None:
    """Before loading: a float32 VLM on a CUDA device whose weights cannot fit ``share`` of that
    GPU (``check_weights_fit``) is refused, instead of failing minutes into the load. Other dtypes,
    other devices, no CUDA here, or a checkpoint whose headers cannot be read: nothing to check here."""
    import torch

    if dtype != "float32" or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return
    try:
        parameters = checkpoint_parameters(path)
    except (OSError, ValueError, KeyError, struct.error):
        return  # unreadable: the load itself says what is wrong with the files
    device_bytes = torch.cuda.get_device_properties(torch.device(device)).total_memory
    check_weights_fit(parameters, dtype, device_bytes, share, gpus)
