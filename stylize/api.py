"""The one-call API: ``stylize(content, style)`` on PIL images or tensors."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from stylize.canvas import resize_longest_tensor
from stylize.config import StyleConfig, resolve_config
from stylize.engine import Callback, Style, Stylizer
from stylize.images import from_tensor, to_tensor
from stylize.masks import mask_tensor


def stylize(
    content: Image.Image | torch.Tensor,
    styles: Image.Image | torch.Tensor | Sequence[Image.Image | torch.Tensor],
    config: StyleConfig | None = None,
    *,
    style_weights: Sequence[float] | None = None,
    masks: Sequence[Image.Image | torch.Tensor] | None = None,
    callback: Callback | None = None,
    stylizer: Stylizer | None = None,
    **overrides: Any,
) -> Image.Image | torch.Tensor:
    """Stylize one image. ``content`` and each style: a PIL image, or a float tensor
    (3, H, W) in 0..1 (torchvision's convention). Returns the same kind as ``content``.

    ``config`` (or a preset name and options as ``**overrides``, e.g. ``size=256``) sets the
    engine; pass ``stylizer`` to reuse a loaded network across calls.

    ``masks`` (spatial control, ``stylize.masks``): one mask per style image, greyscale (a PIL
    image, or a tensor (H, W) in 0..1) at the content's aspect, white where that style applies;
    each style then paints its own region instead of being blended (one style and one mask:
    that style only there; elsewhere the content is kept).
    """
    if stylizer is not None:
        if overrides or (config is not None and config != stylizer.cfg):
            raise ValueError(
                "with stylizer=, the options are the stylizer's own config; "
                "build a Stylizer with the config you want"
            )
        config = stylizer.cfg
    elif config is None:
        config = resolve_config(overrides.pop("preset", None), **overrides)
    elif overrides:
        config = config.replace(**overrides)
    engine = stylizer or Stylizer(config)
    images: list[Image.Image | torch.Tensor] = (
        list(styles) if isinstance(styles, (list, tuple)) else [styles]  # type: ignore[list-item]
    )
    as_pil = isinstance(content, Image.Image)
    c = resize_longest_tensor(_as_pixels(content), config.size)
    # A key of its own per call: the images may differ from the last call's.
    style = Style(
        f"api-{uuid.uuid4().hex}",
        tuple(_as_pixels(s) for s in images),
        tuple(style_weights) if style_weights else None,
    )
    if masks is not None:
        if len(masks) != len(images):
            raise ValueError(f"{len(masks)} masks for {len(images)} style images")
        if style_weights:
            raise ValueError("style_weights blend styles; with masks each style has its region")
        regions = [
            (Style(f"{style.key}-{i}", (img,)), mask_tensor(m))
            for i, (img, m) in enumerate(zip(style.images, masks))
        ]
        try:
            result = engine.stylize_batch([c], [regions[0][0]], callback, regions=[regions])[0]
        finally:
            for s, _ in regions:
                engine.forget(s.key)
        return from_tensor(result.image) if as_pil else result.image / 255.0
    try:
        result = engine.stylize_batch([c], [style], callback)[0]
    finally:
        engine.forget(style.key)
    if as_pil:
        return from_tensor(result.image)
    return result.image / 255.0


def _as_pixels(img: Image.Image | torch.Tensor) -> torch.Tensor:
    if isinstance(img, Image.Image):
        return to_tensor(img.convert("RGB"))
    t = torch.as_tensor(img).float()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"expected an image tensor (3, H, W) in 0..1, got shape {tuple(t.shape)}")
    return t * 255.0
