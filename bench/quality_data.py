"""Procedural latent videos for bench/quality.py: no download, no VAE, the same clips from the same seed.

A clip is what a video VAE's latents of a simple scene could look like: C channels (16 like Wan's latents), F frames
of H x W latent pixels, values of unit scale. The scene has the structure attention must model:
- a textured background in world coordinates seen through a camera that pans (global motion: every token moves);
- several textured shapes (disc, square, triangle, ring: the clip's class) that translate and rotate, each with a
  stripe texture in its own rotating frame (local and temporal structure: the stripes turn with the object);
- painter's-order occlusion with soft edges (objects hide each other and the background, then reappear).

Every clip is drawn from its own generator seeded by (seed, index), so a clip does not depend on the batch it is
in or the device that renders it; parameters are drawn on the CPU and the rendering is vectorised on the device.
"""

from __future__ import annotations

import math

import torch

SHAPES = ("disc", "square", "triangle", "ring")


def _clip_params(seed: int, index: int, frames: int, height: int, width: int, channels: int, objects: int) -> dict:
    g = torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63 - 1))

    def u(*shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    size = min(height, width)
    return dict(
        label=int(torch.randint(len(SHAPES), (1,), generator=g)),
        # background: two colours blended by three plane waves (world coordinates, so the pan shows)
        bg_colors=torch.randn(2, channels, generator=g),
        bg_freq=u(3, 2, lo=-1.0, hi=1.0) * (2 * math.pi / size) * 2.0,
        bg_phase=u(3, lo=0.0, hi=2 * math.pi),
        camera=u(2, lo=-0.6, hi=0.6),  # pan velocity, latent pixels per frame
        # objects: painter's order = index order
        obj_colors=torch.randn(objects, 2, channels, generator=g),
        obj_pos=torch.stack(
            [u(objects, lo=0.15 * width, hi=0.85 * width), u(objects, lo=0.15 * height, hi=0.85 * height)], -1
        ),
        obj_vel=u(objects, 2, lo=-1.0, hi=1.0),
        obj_angle=u(objects, lo=0.0, hi=2 * math.pi),
        obj_spin=u(objects, lo=-0.25, hi=0.25),  # radians per frame
        obj_radius=u(objects, lo=0.12 * size, hi=0.28 * size),
        obj_stripes=u(objects, lo=0.5, hi=1.5) * (2 * math.pi / 4.0),
    )


def _sdf(kind: str, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (negative inside) of a shape of radius r centred at the origin, in local coordinates."""
    if kind == "disc":
        return torch.sqrt(x * x + y * y) - r
    if kind == "square":
        return torch.maximum(x.abs(), y.abs()) - 0.8 * r
    if kind == "triangle":  # equilateral, pointing up in its own frame
        return torch.maximum(-y - 0.5 * r, (math.sqrt(3) / 2) * x.abs() + 0.5 * y - 0.5 * r)
    if kind == "ring":
        return (torch.sqrt(x * x + y * y) - 0.7 * r).abs() - 0.3 * r
    raise ValueError(kind)


def make_clips(
    indices,
    *,
    seed: int,
    frames: int = 16,
    height: int = 32,
    width: int = 32,
    channels: int = 16,
    objects: int = 4,
    device="cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips `indices` of the dataset `seed`: latents (B, C, F, H, W) float32 on `device` and class labels (B,)."""
    params = [_clip_params(seed, int(i), frames, height, width, channels, objects) for i in indices]

    # One host-to-device copy from pinned memory for all parameters: a copy from pageable memory would wait for the
    # device's queue (the previous training step) and serialise data making with training.
    host = {key: torch.stack([torch.as_tensor(p[key], dtype=torch.float32) for p in params]) for key in params[0]}
    flat = torch.cat([v.flatten() for v in host.values()])
    if torch.device(device).type == "cuda":
        flat = flat.pin_memory().to(device, non_blocking=True)
    on_device = dict(zip(host, flat.split([v.numel() for v in host.values()])))

    def stack(key):
        return on_device[key].view(host[key].shape)

    b = len(params)
    t = torch.arange(frames, device=device, dtype=torch.float32).view(1, frames, 1, 1)
    yy, xx = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    cam = stack("camera").view(b, 1, 1, 1, 2) * t.unsqueeze(-1)  # (B, F, 1, 1, 2)
    wx = xx.view(1, 1, height, width) + cam[..., 0]  # world coordinates of every view pixel, (B, F, H, W)
    wy = yy.view(1, 1, height, width) + cam[..., 1]

    freq, phase = stack("bg_freq"), stack("bg_phase")  # (B, 3, 2), (B, 3)
    waves = sum(
        torch.sin(
            freq[:, k, 0].view(b, 1, 1, 1) * wx + freq[:, k, 1].view(b, 1, 1, 1) * wy + phase[:, k].view(b, 1, 1, 1)
        )
        for k in range(3)
    )
    blend = torch.sigmoid(1.5 * waves).unsqueeze(1)  # (B, 1, F, H, W)
    bg = stack("bg_colors")  # (B, 2, C)
    video = bg[:, 0].view(b, -1, 1, 1, 1) + (bg[:, 1] - bg[:, 0]).view(b, -1, 1, 1, 1) * blend

    labels = stack("label").long()
    pos, vel, angle, spin = stack("obj_pos"), stack("obj_vel"), stack("obj_angle"), stack("obj_spin")
    radius, stripes, colors = stack("obj_radius"), stack("obj_stripes"), stack("obj_colors")
    for k in range(objects):
        # Object centre in world coordinates (it moves in the world; the camera pan moves everything in view).
        cx = pos[:, k, 0].view(b, 1, 1, 1) + vel[:, k, 0].view(b, 1, 1, 1) * t
        cy = pos[:, k, 1].view(b, 1, 1, 1) + vel[:, k, 1].view(b, 1, 1, 1) * t
        theta = angle[:, k].view(b, 1, 1, 1) + spin[:, k].view(b, 1, 1, 1) * t
        dx, dy = wx - cx, wy - cy
        lx = torch.cos(theta) * dx + torch.sin(theta) * dy  # local (rotating) frame
        ly = -torch.sin(theta) * dx + torch.cos(theta) * dy
        r = radius[:, k].view(b, 1, 1, 1)
        sdf = torch.zeros_like(lx)
        for s, kind in enumerate(SHAPES):  # the clip's class picks the shape of all its objects
            sdf = torch.where((labels == s).view(b, 1, 1, 1), _sdf(kind, lx, ly, r), sdf)
        alpha = torch.sigmoid(-2.0 * sdf).unsqueeze(1)  # soft edge about one latent pixel wide
        stripe = (0.5 + 0.5 * torch.sin(stripes[:, k].view(b, 1, 1, 1) * lx)).unsqueeze(1)
        c0, c1 = colors[:, k, 0].view(b, -1, 1, 1, 1), colors[:, k, 1].view(b, -1, 1, 1, 1)
        video = video * (1 - alpha) + (c0 + (c1 - c0) * stripe) * alpha
    return video.contiguous(), labels


__all__ = ["SHAPES", "make_clips"]
