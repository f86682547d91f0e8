"""The style-target cache: style targets per (style key, size, style loss), least recently used
dropped first once they pass a byte limit.

An entry maps each style layer to the tuple of tensors its style loss compares with
(losses.STYLE_KINDS): the Gram matrix for ``gram``; mean, covariance, its square root and two
scalars for ``wasserstein2``; mean, standard deviation and two scalars for ``mean_std``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

DEFAULT_CPU_CACHE_BYTES = 1 << 30  # style targets kept on a CPU (a GPU: a tenth of its memory)

Target = tuple[torch.Tensor, ...]  # one layer's, what its style loss takes after the features
CacheKey = tuple[str, int, str]  # (style key, style side, style loss)


class TargetCache:
    """Style targets, least recently used dropped first once they pass ``limit`` bytes.

    ``computed`` counts the targets computed (per style key), ``hits``/``misses`` the lookups:
    with a style per shard, a style's targets are computed once per worker and size.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.nbytes = 0
        self.hits = self.misses = 0
        self.computed: dict[str, int] = {}
        self._entries: OrderedDict[CacheKey, dict[str, Target]] = OrderedDict()

    def get(self, key: CacheKey, layers: Sequence[str]) -> dict[str, Target] | None:
        """The entry of ``key`` = (style key, side, style loss) if it has every layer."""
        entry = self._entries.get(key)
        if entry is None or any(layer not in entry for layer in layers):
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: CacheKey, targets: dict[str, Target]) -> dict[str, Target]:
        old = self._entries.pop(key, {})
        self.nbytes -= _nbytes(old)
        entry = {**old, **targets}
        self._entries[key] = entry
        self.nbytes += _nbytes(entry)
        self.computed[key[0]] = self.computed.get(key[0], 0) + 1
        while self.nbytes > self.limit and len(self._entries) > 1:
            _, dropped = self._entries.popitem(last=False)
            self.nbytes -= _nbytes(dropped)
        return entry

    def forget(self, style_key: str) -> None:
        for k in [k for k in self._entries if k[0] == style_key]:
            self.nbytes -= _nbytes(self._entries.pop(k))

    def stats(self) -> dict[str, float | None]:
        lookups = self.hits + self.misses
        return {
            "styles_cached": len({k[0] for k in self._entries}),
            "bytes": self.nbytes,
            "limit_bytes": self.limit,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hits / lookups, 4) if lookups else None,
            "targets_computed": sum(self.computed.values()),
            "styles_computed": len(self.computed),
            "max_computed_per_style": max(self.computed.values(), default=0),
        }


def _nbytes(targets: dict[str, Target]) -> int:
    return sum(t.numel() * t.element_size() for parts in targets.values() for t in parts)
