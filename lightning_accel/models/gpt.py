"""A small decoder-only transformer (pre-norm, causal attention, tied embeddings)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from lightning_accel.errors import ConfigError


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a :class:`GPT`: vocabulary, context length, depth, width, heads, dropout."""

    vocab_size: int = 256
    seq_len: int = 128
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees only earlier positions.

    The query/key/value projection is one layer whose outputs are grouped by head (each
    head's query, key and value together), so splitting its outputs into equal parts, as
    tensor parallelism does, gives each part whole heads; ``n_head`` is then the heads of
    this part.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.d_model // config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length = x.shape[:2]
        heads = self.qkv(x).view(batch, length, self.n_head, 3, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in heads.unbind(3))
        dropout = self.dropout if self.training else 0.0
        on_cpu_in_bf16 = q.dtype == torch.bfloat16 or torch.is_autocast_enabled("cpu")
        if x.device.type == "cpu" and on_cpu_in_bf16:
            # The CPU's bf16 attention kernel is slower than its fp32 one (about 3x at head
            # size 32), so attention runs in fp32; the matmuls around it keep bf16's speed.
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(
                    q.float(), k.float(), v.float(), is_causal=True, dropout_p=dropout
                ).to(q.dtype)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        return self.proj(y.transpose(1, 2).reshape(batch, length, -1))


class TransformerBlock(nn.Module):
    """One transformer layer: attention and a 4x MLP, each behind a LayerNorm and a residual."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, 4 * config.d_model),
            nn.GELU(),
            nn.Linear(4 * config.d_model, config.d_model),
            nn.Dropout(config.dropout),
        )

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """Token and position embeddings, ``n_layer`` :class:`TransformerBlock`s, a LayerNorm and
    a language-model head tied to the token embedding. Returns logits ``[batch, seq, vocab]``.

    ``tensor_parallel_plan`` is its Megatron-style split: attention heads and the MLP's
    hidden units divided between ranks, norms on sequence slices.
    """

    tensor_parallel_plan = {
        "blocks.*.attn_norm": "sequence_parallel",
        "blocks.*.attn.qkv": "colwise",
        "blocks.*.attn.proj": "rowwise",
        "blocks.*.mlp_norm": "sequence_parallel",
        "blocks.*.mlp.0": "colwise",
        "blocks.*.mlp.2": "rowwise",
    }

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.d_model % config.n_head:
            raise ConfigError(
                "model.n_head", config.n_head, f"does not divide model.d_model={config.d_model}"
            )
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.seq_len, config.d_model)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.final_norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @override
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x))
