"""Neural style transfer after Gatys, Ecker & Bethge (2015), in pure PyTorch.

>>> from stylize import stylize
>>> out = stylize(content_pil, style_pil, preset="fast", size=256)   # a PIL image

``Stylizer`` keeps a VGG-19 and the style targets loaded across calls and batches.
"""

from stylize.config import PRESETS, ConfigError, StyleConfig, resolve_config
from stylize.engine import ItemResult, StepInfo, Style, Stylizer, stylize

__all__ = ["stylize", "Stylizer", "Style", "ItemResult", "StepInfo", "StyleConfig",
           "resolve_config", "PRESETS", "ConfigError"]
