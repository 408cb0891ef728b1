"""Several processes through accelerate: who this process is, its seed, and the few collectives.

`accelerate launch --num_processes N <command>` starts N copies of a command. `Processes` tells
each copy its rank, the world size and its device (from `accelerate.PartialState`) and holds what
the trainer and the samplers share between copies: a meeting point at each step where every
process says whether it failed or was asked to stop (`check`), the mean of the slider's gradients,
sums of counts, and gathering of objects (images). A command started without the launcher is one
process, and none of these communicates.

Why the gradients are averaged here and not by DDP: the slider is attached to the UNet through
forward hooks (`network.SliderNetwork`), so no module's `forward` owns the slider parameters and
DDP's forward-driven reducer never sees them. One all-reduce of all slider gradients per step does
the same thing.

No model code, training loop or file writing here.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .errors import InputError, Interrupted, OutputError, PeerFailed, TrainingError

logger = logging.getLogger(__name__)


# The errors a process's failure is reported as on the main process (one line, their exit code);
# any other error becomes a TrainingError naming its type.
_REPORTED = {cls.__name__: cls for cls in (InputError, TrainingError, OutputError)}


def launched() -> bool:
    """Whether this process is one of several started by a launcher (`accelerate launch`, torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def speaks() -> bool:
    """Whether this process prints: the main process of a launched run, or a run of one process.

    Read from the launcher's environment, so it is known before (or without) any process group.
    """
    return int(os.environ.get("RANK", "0")) == 0


def process_seed(seed: int, rank: int) -> int:
    """The seed process `rank` draws its training points from.

    Rank 0 uses `seed` itself, so a run of one process draws exactly what it always drew; other ranks
    get independent streams derived from (seed, rank) by numpy's SeedSequence spawning.
    """
    if rank == 0:
        return seed
    words = np.random.SeedSequence(entropy=seed, spawn_key=(rank,)).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 32) | int(words[1])


class Processes:
    """This process's place in the run: rank, world size, device, and the collectives between processes.

    Every collective of a run is made right after a `check`, with nothing that can fail on one
    process in between; an error anywhere is announced at the next `check` of the others (by
    `guard`), so every process stops instead of waiting for one that has gone.
    """

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | str = "cpu", state: Any = None):
        self.rank, self.world, self.device = rank, world, torch.device(device)
        self._state = state
        self._failure_known = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def several(self) -> bool:
        return self.world > 1

    def __repr__(self) -> str:
        return f"Processes(rank={self.rank}, world={self.world}, device={self.device})"

    # ----------------------------------------------------------------------------------------------
    # Meeting points and failure
    # ----------------------------------------------------------------------------------------------

    def check(self, error: BaseException | None = None, stop: bool = False, loss: float = 0.0) -> tuple[bool, float]:
        """Every process's meeting point: returns (whether any process was asked to stop, the mean `loss`).

        When any process passes an `error`, every process raises: the failing process its own error,
        the main process (if another one failed) the first failure's message as the same error type,
        the others `PeerFailed`. One process: returns `(stop, loss)` (raising `error` if given).
        """
        if not self.several:
            if error is not None:
                raise error
            return stop, loss
        flags = torch.tensor([float(error is not None), float(stop), float(loss)], dtype=torch.float64, device=self._comm_device)
        flags = self._reduce(flags, "sum")
        failed, stopped, total = (float(v) for v in flags.cpu())
        if failed:
            self._failure_known = True
            reports = self.gather(None if error is None else (self.rank, type(error).__name__, str(error)))
            if error is not None:
                raise error
            first = next(report for report in reports if report is not None)
            if self.is_main:
                rank, kind, message = first
                cls = _REPORTED.get(kind)
                if cls is not None:
                    raise cls(f"process {rank}: {message}")
                raise TrainingError(f"process {rank} failed ({kind}): {message}")
            raise PeerFailed(f"process {first[0]} failed")
        return stopped > 0, total / self.world

    @contextmanager
    def guard(self) -> Iterator["Processes"]:
        """An error in the block is announced at the other processes' next `check`, then re-raised."""
        try:
            yield self
        except PeerFailed:
            raise
        except BaseException as error:  # Ctrl-C too: the others must not wait for this process
            if self.several and not self._failure_known:
                self._failure_known = True
                try:
                    self.check(error if isinstance(error, Exception) else Interrupted("stopped by a signal", 2))
                except Exception:  # the announcement re-raises; the original error is what propagates
                    pass
            raise

    # ----------------------------------------------------------------------------------------------
    # Collectives (no-ops for one process)
    # ----------------------------------------------------------------------------------------------

    @property
    def _comm_device(self) -> torch.device:
        # NCCL communicates CUDA tensors only; gloo CPU tensors.
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        from accelerate.utils import reduce

        return reduce(tensor, reduction=reduction)

    def average_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its mean over the processes, in one all-reduce.

        A parameter without a gradient on a process counts as a zero gradient there.
        """
        if not self.several:
            return
        parameters = list(parameters)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        flat = self._reduce(flat, "mean")
        offset = 0
        for parameter in parameters:
            size = parameter.numel()
            parameter.grad = flat[offset:offset + size].view_as(parameter).clone()
            offset += size

    def broadcast_parameters(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Copy the main process's parameter values to every process (they start the same anyway)."""
        if not self.several:
            return
        for parameter in parameters:
            torch.distributed.broadcast(parameter.data, src=0)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums of `values` over the processes."""
        if not self.several:
            return [float(v) for v in values]
        total = self._reduce(torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device), "sum")
        return [float(v) for v in total.cpu()]

    def gather(self, item: Any) -> list[Any]:
        """Every process's `item`, in rank order, on every process."""
        if not self.several:
            return [item]
        from accelerate.utils import gather_object

        return gather_object([item])

    def share(self, item: Any) -> Any:
        """The main process's `item`, on every process."""
        if not self.several:
            return item
        from accelerate.utils import broadcast_object_list

        box = [item if self.is_main else None]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def mine(self, index: int) -> bool:
        """Whether this process does the work item `index` of a list split across processes."""
        return index % self.world == self.rank


SINGLE = Processes()


def start(device: torch.device | str) -> Processes:
    """This process's `Processes`: one process on `device`, or under a launcher, accelerate's state.

    Under a launcher each process runs on accelerate's device for it (its own GPU); a `device`
    of CPU, or no GPU on the machine, makes the processes CPU processes communicating through gloo.
    """
    device = torch.device(device)
    if not launched():
        return Processes(0, 1, device)
    from accelerate import PartialState

    state = PartialState(cpu=device.type != "cuda")
    if state.num_processes < 2:
        raise InputError(f"launched as {os.environ.get('WORLD_SIZE')} processes, but accelerate set up "
                         f"{state.num_processes}; launch with --multi_gpu (or --cpu on a machine without a GPU)")
    if device.type == "cuda" and device.index is not None and device != state.device:
        logger.warning("--device %s is ignored under several processes: process %d runs on %s",
                       device, state.process_index, state.device)
    # accelerate names the CPU 'cpu:0' under several processes; it is the one CPU device.
    own = state.device if state.device.type != "cpu" else torch.device("cpu")
    return Processes(state.process_index, state.num_processes, own, state)


def finish() -> None:
    """Close a launched run's process group before the process exits.

    Left open, gloo's communication threads can still be running when the interpreter shuts down, and
    the process then aborts ("terminate called without an active exception"), which the launcher
    reports as a failure of the whole run even though every result was written.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
