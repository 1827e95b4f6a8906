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
    def __init__(self, num_layers: int, capacity: int = 0):
        self.num_layers = num_layers
        self._ckv: list[torch.Tensor | None] = [None] * num_layers
        self._kpe: list[torch.Tensor | None] = [None] * num_layers
        self._len = [0] * num_layers
        self._initial_capacity = capacity

    def __len__(self) -> int:  # positions cached (layer 0 is the first to be written each step)
        return self._len[0]

    @property
    def seq_len(self) -> int:
        return self._len[0]

    def layer_len(self, layer: int) -> int:
        return self._len[layer]

    def append(self, layer: int, ckv: torch.Tensor, kpe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add ckv [B, T, R] and kpe [B, T, Dr]; return views over everything cached for this layer."""
        n, t = self._len[layer], ckv.shape[1]
        buf_c, buf_k = self._ckv[layer], self._kpe[layer]
        if buf_c is None or n + t > buf_c.shape[1]:
            cap = max(n + t, self._initial_capacity, 2 * (buf_c.shape[1] if buf_c is not None else 0), 16)
            new_c = ckv.new_empty(ckv.shape[0], cap, ckv.shape[2])
            new_k = kpe.new_empty(kpe.shape[0], cap, kpe.shape[2])
            if n:
                new_c[:, :n] = buf_c[:, :n]
                new_k[:, :n] = buf_k[:, :n]
            self._ckv[layer], self._kpe[layer] = buf_c, buf_k = new_c, new_k
        buf_c[:, n : n + t] = ckv
        buf_k[:, n : n + t] = kpe
        self._len[layer] = n + t
        return buf_c[:, : n + t], buf_k[:, : n + t]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (e.g. drop finished sequences)."""
        for i in range(self.num_layers):
            if self._ckv[i] is not None:
                self._ckv[i] = self._ckv[i].index_select(0, index)
                self._kpe[i] = self._kpe[i].index_select(0, index)

    def nbytes(self) -> int:
        """Bytes actually holding cached positions (not the spare capacity)."""
        total = 0
        for c, k, n in zip(self._ckv, self._kpe, self._len):
            if c is not None:
                total += n * c.shape[0] * (c.shape[2] * c.element_size() + k.shape[2] * k.element_size())
        return total
