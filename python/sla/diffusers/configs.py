"""The published Wan2.1 transformer configurations, as keyword arguments of diffusers' WanTransformer3DModel, and a
tiny one with the same code paths for smoke tests on the CPU."""

from __future__ import annotations

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers and Wan-AI/Wan2.1-T2V-14B-Diffusers, transformer/config.json (the keys that
# WanTransformer3DModel takes; the others are diffusers' bookkeeping).
_WAN21_COMMON = dict(
    patch_size=(1, 2, 2),
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
_WAN_CONFIGS = {
    "1.3B": dict(_WAN21_COMMON, num_attention_heads=12, ffn_dim=8960, num_layers=30),
    "14B": dict(_WAN21_COMMON, num_attention_heads=40, ffn_dim=13824, num_layers=40),
    # 2 blocks of 2 heads of 16, 4 latent channels, text embeddings of width 32: seconds on the CPU in float64.
    "tiny": dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=16,
        ffn_dim=64,
        num_layers=2,
        rope_max_seq_len=32,
    ),
}


def wan_config(name: str, **overrides) -> dict:
    """WanTransformer3DModel keyword arguments of Wan2.1 ``name`` ("1.3B", "14B", or "tiny" for smoke tests), with
    ``overrides`` applied, e.g. ``WanTransformer3DModel(**wan_config("1.3B", num_layers=2))``. A fresh dict."""
    if name not in _WAN_CONFIGS:
        raise ValueError(f"wan_config: name must be one of {', '.join(map(repr, _WAN_CONFIGS))}, got {name!r}")
    return {**_WAN_CONFIGS[name], **overrides}
