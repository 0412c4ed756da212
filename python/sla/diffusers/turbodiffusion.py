"""Loading TurboDiffusion (thu-ml/TurboDiffusion) Wan2.1 / Wan2.2 checkpoints into diffusers' Wan transformer.

TurboDiffusion keeps the original Wan key naming (``blocks.{i}.self_attn.q.weight``, ``head.head.weight``, ...)
and stores the SLA projections at ``blocks.{i}.self_attn.attn_op.local_attn.proj_l.{weight,bias}``. Its training
checkpoints wrap the weights as ``{"state_dict": {"net.<key>": ...}}`` and may store the patch embedding as a
linear layer ((D, C * pt * ph * pw) instead of diffusers' Conv3d (D, C, pt, ph, pw)). The Wan keys are renamed by
diffusers' own single-file converter (``convert_wan_transformer_to_diffusers``); the SLA projections go to
``blocks.{i}.attn1.processor.proj_l.*``.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Optional, Union

import torch

from .wan import apply_sla, plan_sla, self_attention_layers

_SLA_KEY = re.compile(
    r"^(?P<blocks>blocks|vace_blocks)\.(?P<index>\d+)\.self_attn\.attn_op\.local_attn\."
    r"proj_l\.(?P<param>weight|bias)$"
)
_PREFIXES = ("net.", "model.diffusion_model.", "_orig_mod.", "module.")


def read_checkpoint(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file (safetensors) or a torch.save file (.pt/.pth; loaded with
    weights_only=True: no code runs)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"state_dict_or_path: no such file {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise ValueError(f"state_dict_or_path: {path!r} holds a {type(obj).__name__}, expected a state dict")
    return dict(obj)


def _unwrap(state_dict: Mapping) -> dict[str, torch.Tensor]:
    for wrapper in ("state_dict", "model", "net"):  # training checkpoints nest the weights
        inner = state_dict.get(wrapper)
        if isinstance(inner, Mapping) and not isinstance(inner, torch.Tensor):
            state_dict = inner
            break
    out = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state_dict_or_path: {key!r} is a {type(value).__name__}, expected a tensor")
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def convert_turbodiffusion_state_dict(state_dict: Mapping) -> dict[str, torch.Tensor]:
    """TurboDiffusion (original Wan naming) keys to the keys of a diffusers Wan transformer with SLA enabled.
    The input is not modified; tensors are shared, not copied."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    weights = _unwrap(state_dict)
    quantised = [k for k, v in weights.items() if v.dtype in (torch.int8, torch.uint8)]
    if quantised:
        raise ValueError(
            f"state_dict_or_path: int8-quantised weights (e.g. {quantised[0]!r}) are not supported; "
            "use TurboDiffusion's unquantised checkpoint"
        )
    sla_weights, wan_weights = {}, {}
    for key, value in weights.items():
        match = _SLA_KEY.match(key)
        if match:
            sla_weights[f"{match['blocks']}.{match['index']}.attn1.processor.proj_l.{match['param']}"] = value
        else:
            wan_weights[key] = value
    converted = convert_wan_transformer_to_diffusers(wan_weights)  # pops from its argument: a copy was passed
    converted.update(sla_weights)
    return converted


def load_turbodiffusion(
    transformer: torch.nn.Module,
    state_dict_or_path,
    *,
    topk: Optional[float] = None,
    block_q: int = 128,
    block_k: int = 64,
    strict: bool = True,
    **sla_options,
):
    """Loads a TurboDiffusion checkpoint into a diffusers Wan transformer, enabling SLA on the layers that have
    projections in it, and returns the transformer.

    Args:
        transformer: a WanTransformer3DModel (or VACE) built with the checkpoint's configuration (e.g.
            ``WanTransformer3DModel.from_config(...)`` or ``from_pretrained`` of the base Wan model).
        state_dict_or_path: a state dict, or a path to a .safetensors / .pt / .pth file (TurboDiffusion releases
            are .pth). ``{"state_dict": {"net.*": ...}}`` training checkpoints are unwrapped.
        topk, block_q, block_k, **sla_options: SLA options (enable_sla) of the layers enabled here; layers that
            already have SLA keep their options. TurboDiffusion trains with topk 0.1 (the default unless top_p or
            rule is given) and 128 x 64 blocks.
        strict: raise if a model key is missing from the checkpoint or a checkpoint key has no place in the model.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        state_dict = read_checkpoint(state_dict_or_path)
    elif isinstance(state_dict_or_path, Mapping):
        state_dict = state_dict_or_path
    else:
        raise TypeError(
            f"state_dict_or_path: expected a state dict or a file path, got {type(state_dict_or_path).__name__}"
        )
    converted = convert_turbodiffusion_state_dict(state_dict)

    layers = {
        int(i) if b == "blocks" else f"vace_blocks.{i}"
        for b, i in (
            re.match(r"^(blocks|vace_blocks)\.(\d+)\.attn1\.processor\.", k).groups()
            for k in converted
            if ".attn1.processor.proj_l." in k
        )
    }
    # All or nothing: the SLA options, the keys, the shapes and the dtypes are checked against the model as it will
    # be (with the planned SLA layers' projections) before SLA is enabled or any tensor is copied.
    changes = []
    if layers:
        known = dict(self_attention_layers(transformer))
        extra = sorted((k for k in layers if k not in known), key=str)
        if extra:
            raise ValueError(
                f"state_dict_or_path: SLA projections for layers {extra} that the model does not have "
                f"(it has {len(known)} self-attention layers): wrong configuration?"
            )
        fresh = [k for k in layers if not hasattr(known[k].processor, "proj_l")]
        if fresh:
            changes = plan_sla(
                transformer,
                topk=topk,
                block_q=block_q,
                block_k=block_k,
                layers=sorted(fresh, key=str),
                **sla_options,
            )
    own = {k: (v.shape, v.dtype) for k, v in transformer.state_dict().items()}
    names = {id(m): n for n, m in transformer.named_modules()}
    for change in changes:
        prefix = names[id(change.attn)] + ".processor."
        own.update({prefix + k: (v.shape, v.dtype) for k, v in change.processor.state_dict().items()})
    for key in [k for k in converted if k.endswith("patch_embedding.weight")]:
        target = own.get(key)
        value = converted[key]
        if target is not None and value.shape != target[0] and value.numel() == target[0].numel():
            converted[key] = value.reshape(target[0])  # TurboDiffusion's linear patch embedding
    if strict:
        missing = sorted(set(own) - set(converted))
        unexpected = sorted(set(converted) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"state_dict_or_path: does not match the model: {len(missing)} model keys missing "
                f"{missing[:6]}{' ...' if len(missing) > 6 else ''}, {len(unexpected)} checkpoint keys unexpected "
                f"{unexpected[:6]}{' ...' if len(unexpected) > 6 else ''} (pass strict=False to load what fits)"
            )
    wrong = [
        f"{k}: {tuple(v.shape)} {v.dtype} for {tuple(own[k][0])} {own[k][1]}"
        for k, v in converted.items()
        if k in own and (v.shape != own[k][0] or v.is_floating_point() != own[k][1].is_floating_point)
    ]
    if wrong:
        raise ValueError(
            f"state_dict_or_path: {len(wrong)} tensors do not fit the model (shape or dtype): "
            f"{'; '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''}: wrong configuration?"
        )
    apply_sla(changes)
    transformer.load_state_dict(converted, strict=False)
    return transformer


__all__ = ["convert_turbodiffusion_state_dict", "load_turbodiffusion", "read_checkpoint"]
