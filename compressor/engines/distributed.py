"""torch.distributed as mcompress uses it: a job started by ``torchrun`` or ``accelerate launch``.

Detection: the launcher sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and ``MASTER_ADDR`` /
``MASTER_PORT``) in every process it starts; all three present means a distributed launch, world
size 1 included (``torchrun --nproc_per_node 1`` on one GPU). Without them mcompress runs in one
process, as always.

Protocol: rank 0 runs the whole job (validation, reference, every pass, export, gates, report, the
build). The other ranks wait in ``serve()``: rank 0 opens a ``section(fn, payload)``, which
broadcasts ``(fn, payload)`` on the control group; every other rank then calls ``fn(payload)``
while rank 0 runs its own side inside the with-block, and the section's collectives (DDP's
all-reduce, ``broadcast``, ``gather``) pair up rank by rank. ``fn`` must be a module-level function
(it is pickled by reference). When the job ends, ``release_workers()`` broadcasts None and the other
ranks return, so they exit 0 without writing anything.

Two groups, two timeouts. The default group (training collectives and objects within a section)
times out after ``MCOMPRESS_DIST_TIMEOUT_S`` seconds (default 1800, torch's own), so a rank that
hangs mid-step ends the job. The control group (gloo) waits up to 7 days, because rank 0 may spend
hours on export, quantization and gates while the others wait for the next section. A waiting
gloo receive blocks in the kernel; it takes no CPU from rank 0.

Backend: ``gloo`` on a machine without CUDA; with CUDA, ``cpu:gloo,cuda:nccl``, so a tensor's
device picks the backend (NCCL for a student on a GPU, gloo for pickled objects and CPU tensors).

Failure: a rank that dies makes the survivors' next collective fail (gloo: connection closed by
the peer; any backend: the timeout), and the launcher (torchrun's elastic agent; ``accelerate
launch`` runs the same agent) stops the remaining ranks with SIGTERM. A section that raises marks
the group broken: no further collective is attempted, so rank 0's exit is never held up waiting on
a dead peer. The caller turns the failure into ``RankLost`` (one line, exit 130).
"""

from __future__ import annotations

import datetime
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from mcompress.core.errors import ExitCode, InputError, McompressError

LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
TIMEOUT_VARIABLE = "MCOMPRESS_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0
CONTROL_TIMEOUT = datetime.timedelta(days=7)


class RankLost(McompressError):
    """A distributed section stopped because a rank died, hung past the timeout, or the launcher
    stopped the job. Nothing was built; a rerun resumes from the last checkpoint."""

    exit_code = ExitCode.INTERRUPTED


@dataclass(frozen=True)
class World:
    """This process's place in a launch: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int
    local_rank: int
    size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "World | None":
        """The launch the environment describes, or None when this is not a distributed launch."""
        env = os.environ if environ is None else environ
        if not all(name in env for name in LAUNCH_VARIABLES):
            return None
        try:
            size, rank, local_rank = (int(env[name]) for name in LAUNCH_VARIABLES)
        except ValueError:
            values = ", ".join(f"{n}={env[n]!r}" for n in LAUNCH_VARIABLES)
            raise InputError(f"the distributed launch variables are not integers ({values}).",
                             "Start mcompress with torchrun or accelerate launch, or unset them.") from None
        if size < 1 or not 0 <= rank < size or local_rank < 0:
            raise InputError(f"inconsistent distributed launch: RANK {rank}, LOCAL_RANK {local_rank}, WORLD_SIZE {size}.",
                             "Start mcompress with torchrun or accelerate launch, or unset them.")
        return cls(rank, local_rank, size)


@dataclass
class Session:
    """The open process groups of this launch."""

    world: World
    backend: str  # as passed to init_process_group
    control: Any  # the gloo group sections are announced on
    timeout_s: float
    broken: bool = False

    def device_backend(self, device) -> str:
        """The backend that carries collectives on tensors of ``device``."""
        return "nccl" if getattr(device, "type", device) == "cuda" else "gloo"

    def summary(self) -> dict:
        return {"world_size": self.world.size, "backend": self.backend, "timeout_s": self.timeout_s}


_session: Session | None = None


def active() -> Session | None:
    """The open session, or None when this process is not part of a distributed launch."""
    return _session


def timeout_s(environ: dict | None = None) -> float:
    env = os.environ if environ is None else environ
    raw = env.get(TIMEOUT_VARIABLE)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise InputError(f"{TIMEOUT_VARIABLE} is {raw!r}; it must be a positive number of seconds.")
    return value


@contextmanager
def process_group(world: World) -> Iterator[Session]:
    """Join the launch's process group (``env://``: the launcher's MASTER_ADDR/MASTER_PORT) for the
    with-block; ``active()`` returns it meanwhile."""
    import torch
    import torch.distributed as dist

    global _session
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    wait = timeout_s()
    dist.init_process_group(backend, rank=world.rank, world_size=world.size,
                            timeout=datetime.timedelta(seconds=wait))
    _session = Session(world, backend, dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT), wait)
    try:
        yield _session
    finally:
        _session = None
        dist.destroy_process_group()


def _require() -> Session:
    if _session is None:
        raise RuntimeError("no distributed session is open")
    return _session


def _announce(message):
    """``message`` from rank 0 to every rank, on the control group."""
    import torch.distributed as dist

    box = [message]
    dist.broadcast_object_list(box, src=0, group=_require().control)
    return box[0]


@contextmanager
def section(fn: Callable[[Any], None], payload) -> Iterator[Session]:
    """Rank 0: every other rank calls ``fn(payload)`` now; rank 0 runs its side in the with-block.
    An exception inside marks the session broken (no more collectives)."""
    session = _require()
    _announce((fn, payload))
    try:
        yield session
    except BaseException:
        session.broken = True
        _ignore_stop_signals()
        raise


def _ignore_stop_signals() -> None:
    """The job is ending with an error: the launcher's SIGTERM (sent once it sees the failed rank)
    must not turn that error into a bare KeyboardInterrupt before its line is printed."""
    import signal

    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals stay as they are
        pass


def serve() -> None:
    """Ranks > 0: run the sections rank 0 announces until it releases them. SIGINT/SIGTERM (the
    launcher stopping this rank because another one failed) ends the process quietly with exit 130:
    rank 0, or the launcher, says why, so a failure reads as one line rather than one per rank."""
    session = _require()
    try:
        while True:
            message = _announce(None)
            if message is None:
                return
            fn, payload = message
            fn(payload)
    except KeyboardInterrupt:
        session.broken = True
        raise SystemExit(int(ExitCode.INTERRUPTED)) from None
    except BaseException:
        session.broken = True
        raise


def release_workers() -> None:
    """Rank 0, at the end of the job: the waiting ranks return from ``serve()`` (and exit 0).
    Skipped when a section broke: the launcher stops those ranks instead."""
    session = _session
    if session is not None and session.world.is_main and not session.broken:
        _announce(None)


def broadcast(obj):
    """Rank 0's ``obj`` on every rank (default group, within a section)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list | None:
    """Every rank's ``obj``, in rank order, on rank 0; None on the others."""
    import torch.distributed as dist

    session = _require()
    out = [None] * session.world.size if session.world.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def is_collective_failure(err: BaseException) -> bool:
    """True for the errors a collective raises when a peer died or timed out: torch's DistError
    (NCCL, the store), or the plain RuntimeError gloo's transport raises, which names gloo's
    sources ("[.../gloo/transport/tcp/pair.cc:537] Read error ...: Connection reset by peer")."""
    import torch.distributed as dist

    return isinstance(err, dist.DistError) or (isinstance(err, RuntimeError) and "gloo" in str(err))


def failure_reason(err: BaseException) -> str:
    """A collective's error as a short phrase: its first sentence, without the source location
    ("Read error [127.0.0.1]:41182: Connection reset by peer")."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return re.sub(r"^\[[^\]]*\.(?:cpp|cc|h):\d+\]\s*", "", first).split(". ")[0][:200]
