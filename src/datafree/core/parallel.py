"""Scale-out under torchrun: rank and world size from the launcher's environment, the process group, checks that ranks
agree. Without a launcher (no WORLD_SIZE, or 1) every function is a cheap no-op, so the library runs unchanged."""
from __future__ import annotations

import datetime
import hashlib
import os
from typing import Any

import torch

from .errors import DatafreeError


def launched() -> bool:
    """True when a launcher (torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def active() -> bool:
    """True when a process group of more than one rank is up."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints results."""
    return rank() == 0


def init(device: str = "cpu") -> str:
    """Join the launcher's process group (gloo on CPU, NCCL on CUDA) if started as one of several ranks; returns the
    device this rank uses (`cuda` becomes `cuda:LOCAL_RANK`)."""
    if not launched() or active():
        return device
    import torch.distributed as dist

    if not dist.is_available():
        raise DatafreeError("this torch build has no torch.distributed; run without torchrun")
    cuda = device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}" if device == "cuda" else device
        torch.cuda.set_device(torch.device(device))
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=12))
    except (RuntimeError, ValueError) as e:
        raise DatafreeError(f"cannot join the torchrun process group ({str(e).splitlines()[0][:120]}); start with "
                            "`torchrun --nproc_per_node N --no-python datafree -- SUBCOMMAND ...`") from None
    return device


def shutdown(ok: bool = True) -> None:
    """Leave the process group (if any). After a run that ended well every rank first meets the others at a barrier,
    so no rank tears its connections down while a peer is still finishing a collective or setting up; objects that
    hold the group (a DistributedDataParallel wrapper in a reference cycle) are collected while the interpreter is
    whole, not during its teardown."""
    import gc

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if ok and dist.get_world_size() > 1:
        try:
            dist.barrier()
        except RuntimeError:  # a peer already left after an error of its own: nothing left to wait for
            pass
    gc.collect()
    dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if active():
        import torch.distributed as dist

        dist.barrier()


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list alone)."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over ranks (a copy; `t` itself alone)."""
    if not active():
        return t
    import torch.distributed as dist

    t = t.detach().clone()
    dist.all_reduce(t)
    return t


def digest(obj: Any) -> str:
    """A short hash of every tensor (and scalar) in a nested state: equal on two ranks iff they hold the same bits."""
    h = hashlib.sha1()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            h.update(o.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if o.numel() else b"")
        elif isinstance(o, dict):
            for k in sorted(o, key=str):
                if "seconds" in str(k):  # wall time is each rank's own
                    continue
                h.update(str(k).encode())
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
        elif isinstance(o, (int, float, str, bool)) or o is None:
            h.update(repr(o).encode())

    walk(obj)
    return h.hexdigest()[:16]


def check_in_step(state: Any, what: str) -> None:
    """Raise if ranks hold different `state` (e.g. a generator source that drifted apart)."""
    if not active():
        return
    ds = gather(digest(state))
    if len(set(ds)) > 1:
        raise DatafreeError(f"{what} differs across ranks ({', '.join(ds)}); the ranks' computations are not "
                            "deterministic — run with one process or report this")


def broadcast_(tensors) -> None:
    """Overwrite each tensor in place with rank 0's (e.g. BN statistics that each rank updated on its own slice): one
    collective per dtype, not one per tensor, since the KD loop calls it every step."""
    if not active():
        return
    import torch.distributed as dist

    groups: dict[Any, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t.data)
    for ts in groups.values():
        flat = torch.cat([t.reshape(-1) for t in ts])
        dist.broadcast(flat, 0)
        for t, part in zip(ts, flat.split([t.numel() for t in ts])):
            t.copy_(part.view_as(t))


def split(t: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of a batch (the whole batch alone)."""
    if not active():
        return t
    return torch.tensor_split(t, world_size())[rank()]
