"""Neural style transfer after Gatys, Ecker & Bethge (2015), in pure PyTorch.

>>> from stylize import stylize
>>> out = stylize(content_pil, style_pil, preset="fast", size=256)   # a PIL image

``Stylizer`` keeps a VGG-19 and the style targets loaded across calls and batches.

The names below load on first use, so that ``stylize.config`` and ``stylize.common`` (which
the pipeline's driver and its stand-in workers import) do not pull in torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "stylize": "stylize.api",
    "Stylizer": "stylize.engine",
    "Style": "stylize.engine",
    "ItemResult": "stylize.engine",
    "StepInfo": "stylize.engine",
    "StyleConfig": "stylize.config",
    "resolve_config": "stylize.config",
    "PRESETS": "stylize.config",
    "ConfigError": "stylize.config",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stylize' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
