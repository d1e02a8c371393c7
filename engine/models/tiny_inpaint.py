"""Tiny Stable-Diffusion-2-inpainting: the real diffusers classes, tiny configs, random weights.

The directory written here has the layout of ``stabilityai/stable-diffusion-2-inpainting``::

    model_index.json                      StableDiffusionInpaintPipeline, no safety checker
    unet/config.json + diffusion_pytorch_model.safetensors   UNet2DConditionModel, 9 input channels
    vae/config.json + diffusion_pytorch_model.safetensors    AutoencoderKL
    text_encoder/config.json + model.safetensors             CLIPTextModel
    tokenizer/vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
    scheduler/scheduler_config.json       PNDMScheduler (skip_prk_steps), as the real one

so ``SDInpainter.load`` reads both with one code path. What differs from the real
checkpoint is only the sizes: UNet blocks (32, 64) with one layer each, a 2-block VAE
(latent scale 2 instead of 8), a 2-layer CLIP text encoder of width 32, and a CLIP BPE
vocabulary of a few hundred merges trained here on ``tokenizer_corpus()``.

The ``small`` scale keeps the layout and the tokenizer and grows the networks towards the
real ones, for throughput measurements in which the model's compute dominates: a 3-level
UNet (128, 256, 512) with two layers per block, heads of 64 and cross-attention on a
512-wide 4-layer text encoder, at 256 px (32 x 32 latents), and a 4-level VAE (latent
scale 8, as the real one).

The pieces every tiny diffusers builder shares (this one, ``tiny_inpaint_sdxl``,
``tiny_inpaint_sd3``) live here too: the CLIP BPE tokenizer and its folders
(``start_pipeline_dir``, ``TinyTokenizers``), the tiny CLIP text encoder's config
(``clip_text_config``), the VAE (``tiny_vae``), the SD family's noise schedule and the save
that puts the real tokenizer layout back (``save_pipeline``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .corpus import tokenizer_corpus

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTokenizer

# CLIP's pre-tokeniser: special tokens, contractions, letter runs, single digits, punctuation runs.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LEN = 77  # CLIP's context length; the text encoder's position table has this many rows


def _byte_alphabet() -> list[str]:
    """CLIP's byte-to-unicode table, in CLIP's vocabulary order: the printable ASCII and
    Latin-1 bytes stand for themselves, the other 68 byte values map to chr(256 + n)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    n_other = 256 - len(printable)
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(n_other)]


def train_clip_bpe(n_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train up to ``n_merges`` CLIP-style BPE merges on the engine's corpus and lay the
    vocabulary out as CLIP does: 256 byte symbols, the same 256 with ``</w>``, one token per
    merge in merge order, then the two special tokens. Every byte is in the vocabulary, so
    no text is ever unknown."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    alphabet = _byte_alphabet()
    tok = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    # vocab_size counts the alphabet too, so leave room for n_merges; on the engine's small
    # corpus training stops earlier (~260 merges), once every corpus word is one token.
    trainer = BpeTrainer(
        vocab_size=2 * len(alphabet) + n_merges,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    # tokenizers serialises merges as [a, b] pairs (older versions: "a b" strings).
    raw = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in raw]

    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    seen = set(vocab_list)
    for a, b in merges:
        if a + b not in seen:  # two merges may spell the same token; it gets one id
            seen.add(a + b)
            vocab_list.append(a + b)
    vocab_list += [BOS, EOS]
    return {t: i for i, t in enumerate(vocab_list)}, merges


def write_tokenizer(out: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    """The four files of a real CLIP tokenizer folder (no tokenizer.json, as in SD2's repo)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": "!"}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LEN,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        **specials,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


# The tiny CLIP text encoders' sizes (SD2's tiny scale, both of SDXL's and SD3's encoders).
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
# The SD family's training noise schedule, as the real checkpoints' scheduler configs give it.
SD_NOISE_SCHEDULE = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    prediction_type="epsilon",
)


def clip_text_config(vocab: dict[str, int], act: str, sizes: dict = TINY_TEXT) -> CLIPTextConfig:
    """A ``CLIPTextConfig`` of ``sizes`` with activation ``act`` over the tiny CLIP vocabulary
    ``vocab`` (its special tokens' ids, CLIP's ``MAX_LEN`` positions)."""
    from transformers import CLIPTextConfig

    ids = dict(bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab["!"])
    return CLIPTextConfig(vocab_size=len(vocab), max_position_embeddings=MAX_LEN, hidden_act=act, **sizes, **ids)


def tiny_vae(sizes: dict, **options: object) -> AutoencoderKL:
    """An RGB ``AutoencoderKL`` of ``sizes`` (blocks, widths) with 32 norm groups and the
    pipeline's own ``options`` (latent channels, scaling, ...)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, norm_num_groups=32, **sizes, **options)


@dataclass(frozen=True)
class TinyTokenizers:
    """The tiny CLIP BPE vocabulary and merges, laid out as the tokenizer folders ``names`` of
    the pipeline directory ``out_dir`` (the real checkpoints' four files each)."""

    out_dir: Path
    names: tuple[str, ...]
    vocab: dict[str, int]
    merges: list[tuple[str, str]]

    def write(self) -> None:
        """(Re)write every tokenizer folder."""
        for name in self.names:
            write_tokenizer(self.out_dir / name, self.vocab, self.merges)

    def load(self) -> list[CLIPTokenizer]:
        """One ``CLIPTokenizer`` per folder, read back offline."""
        from transformers import CLIPTokenizer

        return [CLIPTokenizer.from_pretrained(self.out_dir / name, local_files_only=True) for name in self.names]


def start_pipeline_dir(out_dir: Path, seed: int, names: tuple[str, ...]) -> TinyTokenizers:
    """A tiny pipeline's build started: ``out_dir`` created, torch seeded with ``seed`` (the
    networks are initialised after this), the CLIP BPE trained and written as the tokenizer
    folders ``names``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vocab, merges = train_clip_bpe(n_merges=600)
    tokenizers = TinyTokenizers(out_dir, names, vocab, merges)
    tokenizers.write()
    return tokenizers


def save_pipeline(pipe: DiffusionPipeline, tokenizers: TinyTokenizers, networks: tuple[torch.nn.Module, ...], fmt: str) -> dict:
    """Save ``pipe`` to the tokenizers' directory (safetensors) and return the builder's
    ``{"format": fmt, "params": N}``, N the parameter count of ``networks``."""
    pipe.save_pretrained(tokenizers.out_dir, safe_serialization=True)
    # save_pretrained rewrites the tokenizers (adding tokenizer.json); put back the real layout.
    for name in tokenizers.names:
        shutil.rmtree(tokenizers.out_dir / name)
    tokenizers.write()
    params = sum(p.numel() for m in networks for p in m.parameters())
    return {"format": fmt, "params": int(params)}


# Per scale, the keyword arguments of UNet2DConditionModel, AutoencoderKL and CLIPTextConfig
# that differ between scales; the shared ones (channels in/out, SD2's linear projections, ...)
# are set in ``build``.
SCALES: dict[str, dict[str, dict]] = {
    # SD2 conventions at tiny width: the first block(s) with cross-attention and the last without.
    "tiny": {
        "unet": dict(
            sample_size=16,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            attention_head_dim=(2, 4),
            cross_attention_dim=32,
        ),
        "vae": dict(
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=32,
        ),
        "text": TINY_TEXT,
    },
    # SD2's UNet without its 1280-wide level: cross-attention in all levels but the deepest,
    # two layers per block; diffusers' attention_head_dim is the number of heads (SD2: 64-wide).
    "small": {
        "unet": dict(
            sample_size=32,  # 256 px / VAE scale 8
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(128, 256, 512),
            layers_per_block=2,
            attention_head_dim=(2, 4, 8),
            cross_attention_dim=512,
        ),
        # Four levels as the real VAE (scale 8), half its widths: at 256 px its full-resolution
        # convolutions would otherwise cost more than the whole UNet.
        "vae": dict(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(64, 128, 256, 256),
            layers_per_block=2,
            sample_size=256,
        ),
        "text": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=8, projection_dim=512),
    },
}


def build(out_dir: Path, seed: int = 0, scale: str = "tiny") -> dict:
    """Write a randomly initialised SD2-inpainting pipeline of ``scale`` ("tiny" or "small") to ``out_dir``.

    Deterministic in ``seed``. Returns ``{"format": "diffusers-sd-inpaint", "params": N}``
    with N the parameter count of UNet + VAE + text encoder.
    """
    from diffusers import PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    if scale not in SCALES:
        raise ValueError(f"inpaint: unknown zoo scale {scale!r}; scales are {', '.join(SCALES)}")
    sizes = SCALES[scale]
    tokenizers = start_pipeline_dir(out_dir, seed, ("tokenizer",))
    (tokenizer,) = tokenizers.load()

    # SD2 conventions: linear projections in the transformer blocks, GELU CLIP text encoder.
    unet = UNet2DConditionModel(
        in_channels=9,  # 4 noisy latents + 1 mask + 4 masked-image latents
        out_channels=4,
        use_linear_projection=True,
        norm_num_groups=32,
        **sizes["unet"],
    )
    vae = tiny_vae(sizes["vae"], latent_channels=4)
    text_encoder = CLIPTextModel(clip_text_config(tokenizers.vocab, "gelu", sizes["text"]))
    # The real checkpoint's scheduler (scheduler/scheduler_config.json of SD2-inpainting).
    scheduler = PNDMScheduler(**SD_NOISE_SCHEDULE, set_alpha_to_one=False, skip_prk_steps=True)
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return save_pipeline(pipe, tokenizers, (unet, vae, text_encoder), "diffusers-sd-inpaint")
