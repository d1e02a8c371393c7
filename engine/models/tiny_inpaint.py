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
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .corpus import tokenizer_corpus

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
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32),
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
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if scale not in SCALES:
        raise ValueError(f"inpaint: unknown zoo scale {scale!r}; scales are {', '.join(SCALES)}")
    sizes = SCALES[scale]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    vocab, merges = train_clip_bpe(n_merges=600)
    tok_dir = out_dir / "tokenizer"
    write_tokenizer(tok_dir, vocab, merges)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)

    # SD2 conventions: linear projections in the transformer blocks, GELU CLIP text encoder.
    unet = UNet2DConditionModel(
        in_channels=9,  # 4 noisy latents + 1 mask + 4 masked-image latents
        out_channels=4,
        use_linear_projection=True,
        norm_num_groups=32,
        **sizes["unet"],
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32, **sizes["vae"])
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            **sizes["text"],
            max_position_embeddings=MAX_LEN,
            hidden_act="gelu",
            bos_token_id=vocab[BOS],
            eos_token_id=vocab[EOS],
            pad_token_id=vocab["!"],
        )
    )
    # The real checkpoint's scheduler (scheduler/scheduler_config.json of SD2-inpainting).
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
        prediction_type="epsilon",
    )
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
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # save_pretrained rewrites the tokenizer (adding tokenizer.json); put back the real layout.
    shutil.rmtree(tok_dir)
    write_tokenizer(tok_dir, vocab, merges)

    params = sum(p.numel() for m in (unet, vae, text_encoder) for p in m.parameters())
    return {"format": "diffusers-sd-inpaint", "params": int(params)}
