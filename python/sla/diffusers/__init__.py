"""SLA in diffusers' Wan transformers (Wan2.1, Wan2.2 incl. its second expert, VACE).

    import sla.diffusers
    sla.diffusers.enable_sla(pipe.transformer, topk=0.1)       # attn1 of every block -> SLA; attn2 stays dense
    sla.diffusers.load_turbodiffusion(transformer, "TurboWan2.1-T2V-1.3B-480P.pth")
    sla.diffusers.disable_sla(pipe.transformer)                 # back to diffusers' dense processor

Needs diffusers >= 0.35 (``pip install sla-attention[diffusers]``); imported only when used, so ``import sla``
does not need diffusers. See docs/PYTHON.md, section "diffusers".
"""

try:
    import diffusers  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sla.diffusers needs diffusers >= 0.35: pip install 'sla-attention[diffusers]' (or pip install diffusers)"
    ) from exc

from .configs import wan_config
from .processor import Float32Linear, SLAWanAttnProcessor
from .token_order import set_token_order, token_order
from .turbodiffusion import convert_turbodiffusion_state_dict, load_turbodiffusion, read_checkpoint
from .wan import disable_sla, enable_sla, recorded_block_maps, self_attention_layers, set_block_maps, sla_processors

__all__ = [
    "Float32Linear",
    "SLAWanAttnProcessor",
    "convert_turbodiffusion_state_dict",
    "disable_sla",
    "enable_sla",
    "load_turbodiffusion",
    "read_checkpoint",
    "recorded_block_maps",
    "self_attention_layers",
    "set_block_maps",
    "set_token_order",
    "sla_processors",
    "token_order",
    "wan_config",
]
