"""enable_sla / disable_sla: swap the self-attention processors of diffusers' Wan transformers in place.

Every ``WanAttention`` that is a self-attention (``attn1``: ``blocks.{i}.attn1`` of WanTransformer3DModel, and
``vace_blocks.{j}.attn1`` of WanVACETransformer3DModel) gets an ``SLAWanAttnProcessor``; cross-attention
(``attn2``) keeps its dense processor and its attention backend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Optional, Union

import torch

from ..rules import _RULE_DEFAULTS, RULE_OPTIONS, BlockRule, PerHead, rule_of
from .processor import DEFAULT_TOPK, SLAWanAttnProcessor
from .token_order import install_token_order, plan_token_order

LayerKey = Union[int, str]
LayerOptions = Union[Mapping[LayerKey, Optional[Mapping]], Callable[[LayerKey], Optional[Mapping]], None]

_BLOCK_NAME = re.compile(r"^(?P<list>blocks|vace_blocks)\.(?P<index>\d+)\.attn1$")


def _wan_attention_class():
    from diffusers.models.transformers.transformer_wan import WanAttention

    return WanAttention


def _dense_processor():
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    return WanAttnProcessor()


def self_attention_layers(transformer: torch.nn.Module) -> Iterator[tuple[LayerKey, torch.nn.Module]]:
    """(key, WanAttention) for every self-attention of a Wan transformer, in module order. The key is the block
    index i for ``blocks.{i}.attn1`` and the string ``'vace_blocks.{j}'`` for VACE blocks."""
    wan_attention = _wan_attention_class()
    for name, module in transformer.named_modules():
        match = _BLOCK_NAME.match(name)
        if match is None or not isinstance(module, wan_attention) or module.is_cross_attention:
            continue
        index = int(match["index"])
        yield (index if match["list"] == "blocks" else f"vace_blocks.{index}"), module


def _named_transformers(model) -> list[tuple[str, torch.nn.Module]]:
    """(name prefix, transformer) of `model`: ("", itself), or a pipeline's `transformer` and (Wan2.2)
    `transformer_2`."""
    if isinstance(model, torch.nn.Module) and hasattr(model, "blocks"):
        return [("", model)]
    found = [
        (name + ".", getattr(model, name))
        for name in ("transformer", "transformer_2")
        if isinstance(getattr(model, name, None), torch.nn.Module)
    ]
    if not found:
        raise TypeError(
            f"expected a diffusers Wan transformer (WanTransformer3DModel, WanVACETransformer3DModel) "
            f"or a pipeline with `transformer` / `transformer_2`, got {type(model).__name__}"
        )
    return found


def _transformers(model) -> list[torch.nn.Module]:
    return [t for _, t in _named_transformers(model)]


def _options_for(key: LayerKey, layer_options: LayerOptions) -> Optional[dict]:
    """The per-layer overrides of layer `key` (None: keep the layer dense), checked for type."""
    if layer_options is None:
        return {}
    if callable(layer_options):
        extra = layer_options(key)
    elif isinstance(layer_options, Mapping):
        extra = layer_options.get(key, {})
    else:
        raise TypeError(
            f"layer_options: expected a dict layer -> options or a callable, got {type(layer_options).__name__}"
        )
    if extra is None:
        return None
    if not isinstance(extra, Mapping):
        raise TypeError(f"layer_options[{key!r}]: expected a dict of SLA options or None, got {type(extra).__name__}")
    extra = dict(extra)
    enabled = extra.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise TypeError(f"layer_options[{key!r}]: 'enabled' expects True or False, got {enabled!r}")
    return extra if enabled else None


def _layer_options(base: dict, extra: dict) -> dict:
    """A layer's options: the call's, overridden by the layer's. A layer that names its own rule family (topk,
    top_p or a whole rule) does not inherit the call's."""
    if "rule" in extra:
        base = {k: v for k, v in base.items() if k not in RULE_OPTIONS and k != "rule"}
    elif "topk" in extra or "top_p" in extra:
        base = {k: v for k, v in base.items() if k not in ("topk", "top_p", "min_blocks", "max_blocks", "rule")}
    return {**base, **extra}


@dataclass
class _Change:
    """One layer of a planned enable_sla: the processor (new, or the layer's own) and its checked options."""

    attn: torch.nn.Module
    processor: SLAWanAttnProcessor
    options: dict

    @property
    def fresh(self) -> bool:
        return self.attn.processor is not self.processor


class _Plan(list):
    """plan_sla's changes: one _Change per layer (the list), and the token order of each transformer
    (``token_orders``: (transformer, TokenOrder or None), when enable_sla was given ``tile``)."""

    def __init__(self):
        super().__init__()
        self.token_orders: list = []


_KEEP = object()  # plan_sla without tile: the token order stays as it is


def plan_sla(
    model,
    *,
    layers: Optional[Iterable[LayerKey]] = None,
    layer_options: LayerOptions = None,
    tile=_KEEP,
    **options,
):
    """Everything enable_sla checks, without changing `model`: returns the list of changes that ``apply_sla``
    makes. `options` are enable_sla's SLA options (only those given; the processor's defaults fill the rest);
    `tile` is enable_sla's (not given: the transformers keep their token order)."""
    if options.get("rule") is not None:
        rule_of(options["rule"], **{k: options.get(k, d) for k, d in _RULE_DEFAULTS.items()})
        base = {k: v for k, v in options.items() if k not in RULE_OPTIONS}
    else:
        base = dict(options)
        base.pop("rule", None)
        if base.get("topk") is None and base.get("top_p") is None:
            base["topk"] = DEFAULT_TOPK
    changes = _Plan()
    for transformer in _transformers(model):
        available = dict(self_attention_layers(transformer))
        if not available:
            raise TypeError(f"{type(transformer).__name__} has no Wan self-attention layers (blocks.{{i}}.attn1)")
        chosen = list(available) if layers is None else list(dict.fromkeys(layers))  # each layer once, in order
        missing = [key for key in chosen if key not in available]
        if missing:
            raise ValueError(
                f"layers: {missing} are not self-attention layers of {type(transformer).__name__}; "
                f"expected block indices 0..{sum(isinstance(k, int) for k in available) - 1}"
                f"{' or vace_blocks.{j}' if any(isinstance(k, str) for k in available) else ''}"
            )
        for key in chosen:
            extra = _options_for(key, layer_options)
            if extra is None:
                continue
            attn = available[key]
            current = attn.processor
            if isinstance(current, SLAWanAttnProcessor):
                processor = current
            else:  # not attached until apply_sla
                processor = SLAWanAttnProcessor(
                    attn.inner_dim // attn.heads, heads=attn.heads, device=attn.to_out[0].weight.device
                )
            try:
                checked = processor.checked_options(**_layer_options(base, extra))
            except (TypeError, ValueError, NotImplementedError) as exc:
                if not extra:
                    raise
                raise type(exc)(f"layer_options[{key!r}]: {exc}") from exc
            changes.append(_Change(attn, processor, checked))
        if tile is not _KEEP:  # checked here (the tile, the transformer's modules), installed by apply_sla
            changes.token_orders.append((transformer, plan_token_order(transformer, tile)))
    return changes


def apply_sla(changes) -> None:
    """Makes the changes of ``plan_sla`` (nothing here can fail half-way: every value was checked there)."""
    for change in changes:
        if change.fresh:
            current = change.attn.processor
            # Keep what diffusers set on the dense processor, so that disable_sla can hand it back.
            change.processor._attention_backend = getattr(current, "_attention_backend", None)
            change.processor._parallel_config = getattr(current, "_parallel_config", None)
        change.processor.apply_options(change.options)
        if change.fresh:
            change.attn.set_processor(change.processor)
    for transformer, order in getattr(changes, "token_orders", ()):
        install_token_order(transformer, order)


def enable_sla(
    model,
    *,
    topk: Optional[PerHead] = None,
    block_q: int = 128,
    block_k: int = 64,
    variant: str = "global",
    feature_map: str = "softmax",
    negligible: float = 0.0,
    scale: Optional[float] = None,
    eps: float = 1e-5,
    layers: Optional[Iterable[LayerKey]] = None,
    layer_options: LayerOptions = None,
    reuse_block_map_steps: int = 0,
    record_block_map: bool = False,
    cuda_dtype: torch.dtype = torch.bfloat16,
    top_p: Optional[PerHead] = None,
    min_blocks: int = 1,
    max_blocks: Optional[int] = None,
    negligible_threshold: float = 0.0,
    max_negligible: Optional[float] = None,
    rule: Optional[BlockRule] = None,
    tile: Optional[tuple[int, int, int]] = None,
):
    """Replaces the self-attention of a diffusers Wan transformer by SLA, in place, and returns `model`.

    Args:
        model: a WanTransformer3DModel (Wan2.1, Wan2.2), a WanVACETransformer3DModel, or a pipeline whose
            `transformer` and `transformer_2` (Wan2.2's second expert) are such models: both get SLA.
        topk, block_q, block_k, variant, feature_map, negligible, scale, eps: SLA options of every replaced layer
            (see sla.sparse_linear_attention). Defaults are TurboDiffusion's: topk 0.1, 128 x 64 blocks.
        top_p, min_blocks, max_blocks, negligible_threshold, max_negligible, rule: the adaptive block-map rules
            (docs/BLOCK_MAP.md) instead of a fixed topk; topk and top_p may be one value per head. ``rule`` is an
            ``sla.BlockRule``; ``sla.apply_rules`` sets calibrated ones per layer.
        layers: the layers to replace: block indices i (``blocks.{i}.attn1``) and/or ``'vace_blocks.{j}'``;
            None replaces every self-attention.
        layer_options: per-layer overrides of the options above: a dict key -> dict of options, or a callable
            key -> dict (None or ``{"enabled": False}`` keeps that layer dense).
        reuse_block_map_steps, record_block_map, cuda_dtype: see SLAWanAttnProcessor.
        tile: (t, h, w) puts the tokens of the whole transformer into 3D tile order (sla.tiling) once after the
            patch embedding and back once after the output head (sla.diffusers.token_order), so that every SLA
            block is a compact video region without per-layer gathers; None (default) keeps raster order (and
            removes a tile order an earlier call installed). Dense layers give the same outputs in either order.

    All or nothing: every layer's options are checked (and its processor made), and ``tile`` against each
    transformer, before any layer or hook changes, so a call that raises leaves the model as it was. A layer that
    already has an SLA processor is reconfigured and keeps its trained projection. The projections are float32
    parameters of the model, ``blocks.{i}.attn1.processor.proj_l.weight`` and ``.bias``, created on the device of
    the layer's weights and zero-initialised (an untrained SLA layer is sparse attention alone).
    """
    changes = plan_sla(
        model,
        layers=layers,
        layer_options=layer_options,
        topk=topk,
        top_p=top_p,
        min_blocks=min_blocks,
        max_blocks=max_blocks,
        negligible=negligible,
        negligible_threshold=negligible_threshold,
        max_negligible=max_negligible,
        rule=rule,
        block_q=block_q,
        block_k=block_k,
        variant=variant,
        feature_map=feature_map,
        scale=scale,
        eps=eps,
        reuse_block_map_steps=reuse_block_map_steps,
        record_block_map=record_block_map,
        cuda_dtype=cuda_dtype,
        tile=tile,
    )
    apply_sla(changes)
    return model


def disable_sla(model):
    """Restores diffusers' dense WanAttnProcessor on every SLA layer (keeping the attention backend and parallel
    configuration), removes the 3D token order, and returns `model`. The SLA projections are dropped from the
    model. Checks every transformer first: a call that raises changes nothing."""
    transformers = _transformers(model)
    layers = []
    for transformer in transformers:
        available = list(self_attention_layers(transformer))
        if not available:
            raise TypeError(f"{type(transformer).__name__} has no Wan self-attention layers (blocks.{{i}}.attn1)")
        layers += [attn for _, attn in available if isinstance(attn.processor, SLAWanAttnProcessor)]
    for attn in layers:
        current = attn.processor
        dense = _dense_processor()
        dense._attention_backend = current._attention_backend
        dense._parallel_config = current._parallel_config
        attn.set_processor(dense)
    for transformer in transformers:
        install_token_order(transformer, None)
    return model


def sla_processors(model) -> dict[str, SLAWanAttnProcessor]:
    """The SLA processors of `model` by module name (``'blocks.3.attn1.processor'``; for a pipeline prefixed with
    ``'transformer.'`` / ``'transformer_2.'``)."""
    result = {}
    for prefix, transformer in _named_transformers(model):
        for name, module in transformer.named_modules():
            if isinstance(module, SLAWanAttnProcessor):
                result[prefix + name] = module
    return result


def set_block_maps(model, maps: Optional[Mapping[str, object]]) -> None:
    """Sets ``processor.block_map`` of every SLA layer from a dict name -> sla.BlockMap (names as
    sla_processors gives them; missing names get None); None clears every map."""
    for name, processor in sla_processors(model).items():
        processor.block_map = None if maps is None else maps.get(name)


def recorded_block_maps(model) -> dict[str, object]:
    """The map each SLA layer used in its latest call (needs ``record_block_map=True`` or block-map reuse)."""
    return {name: p.last_block_map for name, p in sla_processors(model).items() if p.last_block_map is not None}


__all__ = [
    "disable_sla",
    "enable_sla",
    "recorded_block_maps",
    "self_attention_layers",
    "set_block_maps",
    "sla_processors",
]
