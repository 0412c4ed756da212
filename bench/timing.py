"""Timing shared by the benchmarks in bench/ (docs/PERF.md's protocol): CUDA events on the GPU; on the CPU (the
scripts' --smoke runs, where every op returns when it is done) wall-clock stamps with the same interface."""

from __future__ import annotations

import time

import torch


class Event:
    """torch.cuda.Event(enable_timing=True) on "cuda"; a time.perf_counter stamp on any other device."""

    def __init__(self, device: str):
        self.cuda = torch.cuda.Event(enable_timing=True) if device == "cuda" else None
        self.t = 0.0

    def record(self) -> None:
        if self.cuda is not None:
            self.cuda.record()
        else:
            self.t = time.perf_counter()

    def elapsed_time(self, end: "Event") -> float:
        """Milliseconds from this event to `end`, as torch.cuda.Event.elapsed_time."""
        if self.cuda is not None:
            return self.cuda.elapsed_time(end.cuda)
        return 1e3 * (end.t - self.t)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
