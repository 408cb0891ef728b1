"""What a training run cost: UNet samples counted on the model, seconds per phase, peak memory.

`RunStats` counts every UNet forward sample through a forward hook on the UNet (and every backward
sample through a gradient hook on that call's output), times named phases, and writes
`stats.json`. It measures; it does not change what is computed. No model loading or training here.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import torch

from .files import write_text_atomic

# The phases a training step is split into; whatever falls outside them is reported as "other".
# `gradient_averaging` is the all-reduce of several processes; `previews` the training previews.
PHASES = ("partial_denoising", "frozen_predictions", "slider_forward_backward", "gradient_averaging", "optimizer",
          "previews")


class RunStats:
    """Counts and timings of one training run; `attach(unet)` starts counting its calls."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.iterations = 0
        self.unet_calls = 0
        self.forward_samples = 0
        self.backward_samples = 0
        self.seconds = {phase: 0.0 for phase in PHASES}
        self.options: dict[str, object] = {}
        self.processes = 1  # how many processes' samples the counts hold (`combine`)
        self._started = time.perf_counter()
        self._loop_started: float | None = None
        self._handle = None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def attach(self, unet: torch.nn.Module) -> "RunStats":
        self._handle = unet.register_forward_hook(self._count)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _count(self, module, inputs, output) -> None:
        sample = output.sample if hasattr(output, "sample") else output[0]
        batch = sample.shape[0]
        self.unet_calls += 1
        self.forward_samples += batch
        if sample.requires_grad:
            # Counted when the gradient really flows back through this call, not when it is built.
            sample.register_hook(lambda grad: self._count_backward(batch))

    def _count_backward(self, batch: int) -> None:
        self.backward_samples += batch

    def combine(self, processes) -> None:
        """Sum the UNet counts over the processes of a run (a `distributed.Processes`); call on every
        process at the same point. Iterations stay optimizer steps; seconds stay this process's."""
        self.unet_calls, self.forward_samples, self.backward_samples = (int(v) for v in processes.sum(
            [self.unet_calls, self.forward_samples, self.backward_samples]))
        self.processes = processes.world

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to phase `name` (after a CUDA synchronize on a GPU)."""
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start

    def start_loop(self) -> None:
        """Mark the end of setup (model loading, prompt encoding) and the start of the step loop."""
        self._loop_started = time.perf_counter()

    def peak_memory(self) -> dict[str, float]:
        if self.device.type == "cuda":
            return {"cuda_peak_allocated_gib": torch.cuda.max_memory_allocated(self.device) / 1024**3}
        # ru_maxrss is in KiB on Linux and in bytes on macOS.
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_bytes = rss if sys.platform == "darwin" else rss * 1024
        return {"cpu_peak_rss_gib": rss_bytes / 1024**3}

    def to_dict(self) -> dict:
        now = time.perf_counter()
        loop_started = self._loop_started if self._loop_started is not None else self._started
        loop = now - loop_started
        per = max(self.iterations, 1)
        return {
            "iterations": self.iterations,
            "processes": self.processes,
            "unet_calls": self.unet_calls,
            "unet_forward_samples": self.forward_samples,
            "unet_backward_samples": self.backward_samples,
            "forward_samples_per_iteration": self.forward_samples / per,
            "backward_samples_per_iteration": self.backward_samples / per,
            "seconds": {
                "total": now - self._started,
                "setup": loop_started - self._started,
                "loop": loop,
                "per_iteration": loop / per,
                **{phase: value for phase, value in self.seconds.items()},
                "other": loop - sum(self.seconds.values()),
            },
            "peak_memory": self.peak_memory(),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "options": self.options,
        }

    def write(self, path: str | Path, extra: Mapping[str, object] | None = None) -> Path:
        """Write `stats.json` atomically (temporary file, then rename)."""
        return write_text_atomic(path, json.dumps({**self.to_dict(), **(extra or {})}, indent=2) + "\n")
