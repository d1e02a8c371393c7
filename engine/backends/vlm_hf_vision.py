"""The image side of ``vlm_hf.HFLlavaVLM``: each distinct image through the vision tower once,
up to the selected layer only, and its features merged into the rows' token embeddings."""

from __future__ import annotations

from typing import Sequence

import torch


class LlavaVision:
    """Mixin of ``HFLlavaVLM``: reads ``self.model`` (a ``LlavaForConditionalGeneration``)."""

    def _vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected features [U, N, H_text] of U distinct images [U, 3, h, w] (N = 576 for
        LLaVA-1.5), each image encoded once: scoring sends a view with every candidate.

        The CLIP tower runs only up to the layer(s) the config's ``vision_feature_layer``
        selects (-2 for LLaVA-1.5: 23 of CLIP-L's 24 layers) and keeps no other layer's hidden
        states; transformers' ``get_image_features`` asks for all of them (25 x 577 x 1024 x
        2 B = 29.5 MB per image in float16) and keeps them while it selects one. Any other
        tower goes through ``get_image_features``.
        """
        llava, cfg = self.model.model, self.model.config
        tower = llava.vision_tower
        if not _is_clip_tower(tower):
            encoded = llava.get_image_features(
                pixel_values=pixel_values,
                vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                return_dict=True,
            )
            return torch.stack(list(encoded.pooler_output))
        wanted = hidden_state_indices(cfg.vision_feature_layer, len(tower.encoder.layers))
        hidden = tower.pre_layrnorm(tower.embeddings(pixel_values))  # hidden state 0: [U, 577, 1024]
        kept = {0: hidden} if 0 in wanted else {}
        for i, layer in enumerate(tower.encoder.layers[: max(wanted)], start=1):
            hidden = layer(hidden, None)
            if i in wanted:
                kept[i] = hidden
        selected = [kept[i] for i in wanted]
        if cfg.vision_feature_select_strategy == "default":  # drop CLS
            selected = [h[:, 1:] for h in selected]
        return llava.multi_modal_projector(torch.cat(selected, dim=-1))

    def _embed(self, input_ids: torch.Tensor, features: torch.Tensor, inverse: list[int]) -> torch.Tensor:
        """Token embeddings [R, S, H] with row r's image tokens replaced by ``features[inverse[r]]``
        ([U, N, H]): LlavaModel's merge, without its concatenated copy of every row's features."""
        embeds = self.model.get_input_embeddings()(input_ids)
        is_image = input_ids == self.model.config.image_token_id
        for r, u in enumerate(inverse):
            embeds[r, is_image[r]] = features[u].to(embeds.dtype)
        return embeds


def hidden_state_indices(feature_layer: int | Sequence[int], n_layers: int) -> list[int]:
    """The indices into a tower's hidden states (0 = embeddings, i = after layer i) that
    ``vision_feature_layer`` names, negative ones counted from the end: -2 of 24 layers is 23."""
    layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    return [layer % (n_layers + 1) for layer in layers]


def _is_clip_tower(tower) -> bool:
    """Whether ``tower`` is transformers' CLIPVisionModel layout, which ``_vision_features``
    runs layer by layer."""
    encoder = getattr(tower, "encoder", None)
    return hasattr(tower, "embeddings") and hasattr(tower, "pre_layrnorm") and hasattr(encoder, "layers")
