"""InternLM v1 (internlm-chat-7b / -20b): a Llama-shaped decoder with optional q/k/v/o bias."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from core.config import ModelConfig
from core.distributed import SINGLE, TPGroup
from core.formats.dense import DenseLinearMethod
from core.kernels import KernelTable
from core.layers.activation import SiluAndMul
from core.layers.attention import PagedAttention
from core.layers.attention_metadata import AttentionMetadata
from core.layers.parallel import column_linear, embedding, lm_head, row_linear
from core.layers.rmsnorm import RMSNorm
from core.layers.rotary import RotaryEmbedding
from core.weight_format import LinearMethod

# checkpoint projection -> (fused module, output shard)
PACKED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
_PROJ = re.compile(r"^(model\.layers\.\d+\.(?:self_attn|mlp))\.(\w+_proj)\.(\w+)$")


class InternLMAttention(nn.Module):
    """This rank's heads (all of them at N=1)."""

    def __init__(
        self,
        cfg: ModelConfig,
        method: LinearMethod,
        kernels: KernelTable,
        dtype: torch.dtype,
        tp: TPGroup,
    ) -> None:
        super().__init__()
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.num_heads = tp.split(cfg.num_heads, "model.num_heads")
        self.num_kv_heads = tp.split(cfg.num_kv_heads or cfg.num_heads, "model.num_kv_heads")
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        tp.split(cfg.hidden_size, "model.hidden_size (o_proj's input)", method.input_block)
        self.qkv_proj = column_linear(
            tp, cfg.hidden_size, [q_size, kv_size, kv_size], cfg.bias, method, dtype
        )
        self.o_proj = row_linear(tp, q_size, cfg.hidden_size, cfg.bias, method, dtype)
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim, kernels)
        self.q_size, self.kv_size = q_size, kv_size
        # rotary + KV write and the residual add + RMSNorm read these outputs: with
        # kernels.split_k_sum=consumer they add the GEMMs' split-K partial sums
        self.qkv_proj.partial_output = self.o_proj.partial_output = kernels.partial_sums

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata
    ) -> torch.Tensor:
        qkv = self.qkv_proj(x)  # (T, q + 2kv)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)  # (T, H, D)
        k = k.view(-1, self.num_kv_heads, self.head_dim)  # (T, Hk, D)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        out = self.attn(q, k, v, meta, rope)  # (T, H, D): RoPE applied as K/V are cached
        return self.o_proj(out.reshape(-1, self.q_size))


class InternLMMLP(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        method: LinearMethod,
        kernels: KernelTable,
        dtype: torch.dtype,
        tp: TPGroup,
    ) -> None:
        super().__init__()
        block = math.lcm(method.input_block, method.output_block)
        inter = tp.split(cfg.intermediate_size, "model.intermediate_size", block)
        self.gate_up_proj = column_linear(tp, cfg.hidden_size, [inter, inter], False, method, dtype)
        self.down_proj = row_linear(tp, inter, cfg.hidden_size, False, method, dtype)
        self.act = SiluAndMul(kernels)
        # SiLU x mul and the next residual add + RMSNorm read these (see InternLMAttention)
        self.gate_up_proj.partial_output = self.down_proj.partial_output = kernels.partial_sums

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # SiLU x mul writes down_proj's input in the order its GEMV reads best
        frag = self.down_proj.wants_fragment_order(x.shape[0])
        return self.down_proj(self.act(self.gate_up_proj(x), fragment=frag))


class InternLMDecoderLayer(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        method: LinearMethod,
        kernels: KernelTable,
        dtype: torch.dtype,
        tp: TPGroup,
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, kernels, dtype)
        self.self_attn = InternLMAttention(cfg, method, kernels, dtype, tp)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, kernels, dtype)
        self.mlp = InternLMMLP(cfg, method, kernels, dtype, tp)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # the norms write qkv_proj's and gate_up_proj's inputs in the order their GEMVs read
        # best (core/fragment_order.py: decode batches on the AWQ tensor-core GEMV)
        m = x.shape[0]
        frag = self.self_attn.qkv_proj.wants_fragment_order(m)
        if residual is None:
            residual = x
            x = self.input_layernorm(x, fragment=frag)
        else:
            x, residual = self.input_layernorm(x, residual, fragment=frag)
        x = self.self_attn(x, rope, meta)
        frag = self.mlp.gate_up_proj.wants_fragment_order(m)
        x, residual = self.post_attention_layernorm(x, residual, fragment=frag)
        return self.mlp(x), residual


class InternLMModel(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        method: LinearMethod,
        kernels: KernelTable,
        dtype: torch.dtype,
        tp: TPGroup,
    ) -> None:
        super().__init__()
        vocab = tp.split(cfg.vocab_size, "model.vocab_size")
        self.embed_tokens = embedding(tp, vocab, cfg.hidden_size, dtype)
        self.layers = nn.ModuleList(
            InternLMDecoderLayer(cfg, method, kernels, dtype, tp) for _ in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, kernels, dtype)
        self.rotary_emb = RotaryEmbedding(
            cfg.hidden_size // cfg.num_heads, cfg.max_position_embeddings, cfg.rope_base,
            cfg.rope_scaling, cfg.rope_scaling_factor,
        )  # fmt: skip

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # (T, hidden)
        rope = self.rotary_emb.cos_sin(positions, meta.token_context_lens)  # once for all layers
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, rope, meta)
        x, _ = self.norm(x, residual)
        return x


class InternLMForCausalLM(nn.Module):
    """InternLM v1. Embeddings, norms and lm_head stay dense; projections use ``linear_method``.

    With ``tp`` of size N, heads, MLP features and the vocabulary are split N ways
    (core.layers.parallel); norms and the residual stream are whole on every rank.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        linear_method: LinearMethod,
        kernels: KernelTable,
        dtype: torch.dtype,
        tp: TPGroup = SINGLE,
    ) -> None:
        super().__init__()
        self.config = cfg
        self.model = InternLMModel(cfg, linear_method, kernels, dtype, tp)
        vocab = tp.split(cfg.vocab_size, "model.vocab_size")
        self.lm_head = lm_head(tp, cfg.hidden_size, vocab, DenseLinearMethod(), dtype)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)  # (B, vocab)

    def checkpoint_target(self, name: str) -> tuple[str, str, int | None] | None:
        if name.endswith("rotary_emb.inv_freq"):
            return None
        m = _PROJ.match(name)
        if m:
            prefix, proj, param = m.groups()
            if proj in PACKED:
                fused, shard = PACKED[proj]
                return f"{prefix}.{fused}", param, shard
            return f"{prefix}.{proj}", param, None
        module, _, param = name.rpartition(".")
        return module, param, None

    def attention_layers(self) -> list[nn.Module]:
        return [layer.self_attn.attn for layer in self.model.layers]
