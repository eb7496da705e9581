"""Data-parallel training across processes that torchrun starts: one rank per GPU (or CPU process).

Rank r of N trains streams r*B .. r*B+B-1 of the N*B streams (B = --batch-size) and
DistributedDataParallel averages the gradients, so every rank takes the step one process would take
with all N*B streams. Whatever decides what happens next (elapsed time, a stop signal, the
validation loss) is agreed by a collective before it is used. Launching, restarts and rendezvous
are torchrun's; see docs/distributed.md.
"""

from __future__ import annotations

import gc
import os
import shlex
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from charrnn.devices import resolve_device
from charrnn.errors import CharrnnError

# How long a rank waits in one collective (and at start-up for the others) before giving up.
# It bounds how long a job can hang on a rank that stopped answering without dying; a rank
# that dies is noticed at once (its sockets close) and torchrun stops the rest.
DEFAULT_TIMEOUT_S = 300.0

T = TypeVar("T")


def launched() -> bool:
    """True in a process started by torchrun (or anything else that sets its variables)."""
    return all(name in os.environ for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))


def restart_count() -> int:
    """How often torchrun has restarted this job's workers (0 on the first attempt)."""
    raw = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return int(raw) if raw.isdigit() else 0


def job_id() -> str | None:
    """torchrun's rendezvous id (--rdzv-id; a fresh one for every --standalone job)."""
    return os.environ.get("TORCHELASTIC_RUN_ID") if launched() else None


def is_main_process() -> bool:
    """Rank 0, or not launched by torchrun at all: the process that prints and writes."""
    return os.environ.get("RANK", "0") == "0"


def timeout_seconds() -> float:
    raw = os.environ.get("CHARRNN_DIST_TIMEOUT", "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise CharrnnError(f"CHARRNN_DIST_TIMEOUT must be a number of seconds, got {raw!r}") from None
    if not seconds > 0:
        raise CharrnnError(f"CHARRNN_DIST_TIMEOUT must be positive, got {raw!r}")
    return seconds


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job. With `world == 1` every collective is a no-op."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    # ----- device and model -----
    def device_for(self, name: str) -> torch.device:
        """The device this rank trains on: its own GPU (by LOCAL_RANK) or the CPU."""
        if not self.distributed:
            return resolve_device(name)
        if name not in ("auto", "cuda", "cpu"):
            raise CharrnnError(
                f"--device {name} does not fit a torchrun job: use auto, cuda or cpu "
                "(each rank takes the GPU numbered by its LOCAL_RANK)"
            )
        if name == "cpu" or not torch.cuda.is_available():
            if name == "cuda":
                raise CharrnnError("--device cuda was asked for, but CUDA is not available here")
            return torch.device("cpu")
        device = torch.device("cuda", self.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device

    def describe(self, device: torch.device) -> str:
        """Where training runs, for people: 'cuda:0', or 'cuda × 8 ranks'."""
        return f"{device.type} × {self.world} ranks" if self.distributed else str(device)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to run forward and backward through: DDP averages gradients across ranks.

        Everything else (state_dict, evaluation, sampling, the carried state) uses `model` itself.
        """
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def seed_dropout(self, seed: int) -> None:
        """Give every rank but 0 its own random stream, so ranks do not draw the same dropout masks.

        Called after the model is built, so every rank builds the same initial weights.
        """
        if self.rank > 0:
            torch.manual_seed((seed * 1_000_003 + self.rank) % 2**63)

    # ----- collectives (tensors on the training device, objects over the CPU backend) -----
    def agree_max(self, values: list[float], device: torch.device) -> list[float]:
        """The largest of each value across ranks, so every rank decides on the same numbers."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over ranks (in place, returned)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over ranks, as a new tensor."""
        if not self.distributed:
            return tensor.clone()
        return self.sum(tensor.clone()) / self.world

    def gather_streams(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every rank's (layers, B, H) state joined along the stream axis: (layers, N*B, H), by global stream."""
        if not self.distributed:
            return tensors
        joined = []
        for tensor in tensors:
            parts = [torch.empty_like(tensor) for _ in range(self.world)]
            dist.all_gather(parts, tensor.contiguous())
            joined.append(torch.cat(parts, dim=1))
        return joined

    def shard_streams(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """This rank's share of a state that holds every stream (the inverse of `gather_streams`)."""
        if not self.distributed:
            return tensors
        shards = []
        for tensor in tensors:
            per_rank = tensor.shape[1] // self.world
            shards.append(tensor[:, self.rank * per_rank : (self.rank + 1) * per_rank].clone())
        return shards

    def gather_objects(self, value: T) -> list[T]:
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: T | None) -> T:
        """Rank 0's `value` on every rank."""
        if not self.distributed:
            return value  # type: ignore[return-value]
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def together(self, work: Callable[[], T]) -> T:
        """Run `work` on every rank; if it fails on any, fail on every one with that rank's message.

        Used around set-up (the run directory, the corpus), so a mistake that one rank finds does
        not leave the others waiting for it until the timeout.
        """
        if not self.distributed:
            return work()
        result, error = None, None
        try:
            result = work()
        except CharrnnError as exc:
            error = str(exc)
        errors = self.gather_objects(error)
        for rank, message in enumerate(errors):
            if message is not None:
                raise CharrnnError(message if rank == self.rank else f"rank {rank} failed: {message}")
        return result  # type: ignore[return-value]

    # ----- random state -----
    def rng_states(self, device: torch.device) -> list[dict[str, Any]]:
        """Every rank's generator states, by rank (a collective)."""
        mine = {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        }
        return self.gather_objects(mine)

    def restore_rng(
        self, saved: list[dict[str, Any]] | None, saved_world: int, seed: int, device: torch.device
    ) -> None:
        """Each rank takes back its own generator. With another number of ranks nothing can be
        exact with dropout on; a rank without a saved generator starts a fresh one."""
        if not self.distributed:
            return  # a single process uses the checkpoint's own rng_cpu / rng_cuda fields
        if saved and saved_world == self.world:
            torch.set_rng_state(saved[self.rank]["cpu"])
            if device.type == "cuda" and saved[self.rank].get("cuda") is not None:
                torch.cuda.set_rng_state(saved[self.rank]["cuda"], device)
        elif self.rank > 0:  # rank 0 keeps the generator the checkpoint saved as rng_cpu / rng_cuda
            torch.manual_seed((seed * 1_000_003 + self.rank + 7919 * self.world) % 2**63)


def streams_per_rank(total_streams: int, saved_world: int, world: int) -> int:
    """The per-rank batch when a run of `total_streams` streams resumes on `world` ranks."""
    if total_streams % world:
        raise CharrnnError(
            f"cannot resume on {world} rank(s): the run trains {total_streams} streams in all "
            f"({saved_world} rank(s) × {total_streams // saved_world}), which {world} ranks cannot share "
            f"equally; resume on a number of ranks that divides {total_streams}"
        )
    return total_streams // world


@contextmanager
def session() -> Iterator[Ranks]:
    """Join the job's process group (when torchrun started this process) and leave it at the end.

    Nested sessions share the group; the outermost one destroys it.
    """
    if not launched():
        yield Ranks()
        return
    try:
        ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    except ValueError:
        raise CharrnnError("WORLD_SIZE, RANK and LOCAL_RANK must be integers") from None
    if not ranks.distributed:
        yield ranks
        return
    owner = not dist.is_initialized()
    if owner:
        _join(ranks)
    try:
        yield ranks
    except RuntimeError as exc:
        if not _lost_contact(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CharrnnError(
            f"rank {ranks.rank}: lost contact with the other ranks (one of them failed or was stopped; "
            f"its own message says why): {first[:300]}"
        ) from None
    else:
        if owner:
            _leave_together()
    finally:
        if owner and dist.is_initialized():
            gc.collect()  # DDP's reducer holds the group: let it go first, while the interpreter is whole
            dist.destroy_process_group()


def _leave_together() -> None:
    """Wait, at the end of a job that went well, until every rank is done with the group.

    Rank 0 has the most to do at the end (the curves, the last sample); a rank that tore down its
    half of the group and exited meanwhile could be aborted in gloo's teardown ("terminate called
    without an active exception") and fail the job that had just succeeded. Destroying the group
    on all ranks at the same moment is what PyTorch asks of it.
    """
    try:
        dist.barrier()
    except RuntimeError:
        pass  # a peer is gone already: nothing to wait for, and the job's result stands


def _join(ranks: Ranks) -> None:
    """Initialise the process group: gloo for CPU tensors, NCCL for CUDA ones."""
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    timeout = timedelta(seconds=timeout_seconds())
    # Joining can wait on a peer's socket with no deadline of its own (gloo's connect, when a peer
    # is gone or an address is stale): give up after the timeout, so torchrun sees a failed rank.
    watchdog = threading.Timer(timeout.total_seconds() + 30, _give_up, args=(ranks, timeout))
    watchdog.daemon = True
    watchdog.start()
    try:
        store = _attempt_store(ranks, timeout)
        if store is None:
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            dist.init_process_group(
                backend=backend, store=store, rank=ranks.rank, world_size=ranks.world, timeout=timeout
            )
    except RuntimeError as exc:  # DistNetworkError, DistStoreError and gloo's own errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CharrnnError(f"rank {ranks.rank}: could not join the other ranks: {first[:300]}") from None
    finally:
        watchdog.cancel()


def _give_up(ranks: Ranks, timeout: timedelta) -> None:
    print(
        f"charrnn: error: rank {ranks.rank}: could not join the other {ranks.world - 1} rank(s) within "
        f"{timeout.total_seconds():.0f}s (CHARRNN_DIST_TIMEOUT); giving up",
        file=sys.stderr,
        flush=True,
    )
    os._exit(1)


def _attempt_store(ranks: Ranks, timeout: timedelta) -> dist.Store | None:
    """A store of this attempt's own, where torchrun would hand every attempt the same one.

    torchrun keeps one key-value store for all attempts of a job, and a restarted group can read
    the addresses its predecessor published there and fail to connect (pytorch/pytorch#135712).
    With one torchrun agent (one machine) the restart count names the attempt on every rank, so a
    prefix keeps the attempts apart. Across machines the counts can differ; there, set
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun instead (each attempt then gets a new store).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        return None
    try:
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError):
        return None
    client = dist.TCPStore(host, port, ranks.world, is_master=False, timeout=timeout)
    return dist.PrefixStore(f"charrnn/attempt-{restart_count()}", client)


def _lost_contact(exc: RuntimeError) -> bool:
    """A failed or timed-out collective (a peer died or hangs), rather than a bug in this process."""
    text = str(exc)
    return isinstance(exc, dist.DistError) or "gloo" in text or "NCCL" in text or "Timed out" in text


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The torchrun command that runs `charrnn ARGV` (without its --nproc) on `nproc` local processes."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    # "--" before the command keeps torchrun's own parser off charrnn's options: it would take
    # --run for an abbreviation of its --run-path (and refuse it as ambiguous).
    command = next((i for i, arg in enumerate(args) if not arg.startswith("-")), 0)
    args = [*args[:command], "--", *args[command:]]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    return [*launcher, "-m", "charrnn", *args]


def relaunch(nproc: int, argv: list[str], announce: Callable[[str], None] | None = None) -> None:
    """Replace this process by torchrun running the same command on `nproc` processes."""
    if launched():
        raise CharrnnError("--nproc starts torchrun itself: drop it when the command already runs under torchrun")
    if nproc < 1:
        raise CharrnnError(f"--nproc must be at least 1, got {nproc}")
    command = torchrun_command(nproc, argv)
    if announce:
        announce(shlex.join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
