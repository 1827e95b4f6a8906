"""KV cache for Multi-head Latent Attention: it stores the compressed latent, not keys and values.

Per layer and token we keep `kv_lora_rank` normalised latent values plus the `qk_rope_head_dim`
rotated key values shared by all heads (576 values for Kimi-VL, against 16 x (192 + 128) = 5120
for an expanded K/V cache). Decoding attends in the latent space (model/language.py), so the
cache is never re-expanded.

Storage is preallocated and grown geometrically, so appending a token is O(1) amortised.

Shape legend: B batch, S cached positions, R kv_lora_rank, Dr qk_rope_head_dim.
"""

from __future__ import annotations

import torch


class LatentCache:
    """Per layer one buffer [B, capacity, R + Dr]: the normalised latent, then the rotated shared key."""

    def __init__(self, num_layers: int, capacity: int = 0):
        self.num_layers = num_layers
        self._buf: list[torch.Tensor | None] = [None] * num_layers
        self._len = [0] * num_layers
        self._initial_capacity = capacity

    def __len__(self) -> int:
        return self._len[0]

    @property
    def seq_len(self) -> int:
        """Positions cached (layer 0 is written first in each forward)."""
        return self._len[0]

    def layer_len(self, layer: int) -> int:
        return self._len[layer]

    def append(self, layer: int, entry: torch.Tensor) -> torch.Tensor:
        """Add entry [B, T, R + Dr]; return a view over everything cached for this layer [B, S, R + Dr]."""
        n, t = self._len[layer], entry.shape[1]
        buf = self._buf[layer]
        if buf is None or n + t > buf.shape[1]:
            cap = max(n + t, self._initial_capacity, 2 * (buf.shape[1] if buf is not None else 0), 16)
            new = entry.new_empty(entry.shape[0], cap, entry.shape[2])
            if n:
                new[:, :n] = buf[:, :n]
            self._buf[layer] = buf = new
        buf[:, n : n + t] = entry
        self._len[layer] = n + t
        return buf[:, : n + t]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (e.g. drop finished sequences)."""
        self._buf = [b.index_select(0, index) if b is not None else None for b in self._buf]

    def nbytes(self) -> int:
        """Bytes holding cached positions (not the spare capacity)."""
        return sum(n * b.shape[0] * b.shape[2] * b.element_size() for b, n in zip(self._buf, self._len) if b is not None)


class StaticLatentCache:
    """Fixed-shape latent cache for graph-captured decoding: buf [layers, B, capacity, R + Dr] and a
    `valid` mask [B, capacity] of the columns a query may read (prompt tokens, then each decoded one).

    Nothing here ever changes shape or address, so a decode step over it can be captured once and
    replayed; the column to write is a device tensor, not a Python int.
    """

    def __init__(self, num_layers: int, batch: int, capacity: int, width: int, dtype: torch.dtype, device):
        self.buf = torch.zeros(num_layers, batch, capacity, width, dtype=dtype, device=device)
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)

    @property
    def batch(self) -> int:
        return self.buf.shape[1]

    @property
    def capacity(self) -> int:
        return self.buf.shape[2]

    def load(self, cache: LatentCache, attention_mask: torch.Tensor | None = None) -> int:
        """Copy a prefilled dynamic cache in (its batch must match); returns the positions copied.
        `attention_mask` [B, S] (1 = real token) marks left padding as unreadable."""
        n = cache.seq_len
        if n > self.capacity:
            raise ValueError(f"static cache holds {self.capacity} positions, the prompt has {n}")
        self.valid.zero_()
        for i in range(self.buf.shape[0]):
            self.buf[i, :, :n] = cache._buf[i][:, :n]
        self.valid[:, :n] = True if attention_mask is None else attention_mask[:, -n:].bool()
        return n

    def nbytes_per_token(self) -> int:
        """Cache bytes one position costs over all layers (one sequence)."""
        return self.buf.shape[0] * self.buf.shape[3] * self.buf.element_size()
