"""Where a training process runs: its device, its rank under torchrun (DDP), the wrapped module."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deskpro.common.torch_utils import resolve_device


def torch_device(device: str) -> torch.device:
    """`resolve_device` (auto -> cuda when available, else cpu) as a torch.device."""
    return torch.device(resolve_device(device))


@dataclass
class Dist:
    """This process's place in a (DDP) run: rank, world size, device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this call initialised torch.distributed, so it tears it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_dist(distributed: bool, device: str, local_rank: int = 0) -> Dist:
    """One process of the run; under torchrun (`distributed`) torch.distributed is initialised."""
    if not distributed:
        return Dist(device=torch_device(device))
    import torch.distributed as dist

    cuda = torch_device(device).type == "cuda"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Dist(dist.get_rank(), dist.get_world_size(), device, owns)


def wrap_module(module: torch.nn.Module, compile_module: bool, dist: Dist):
    """The callable that runs the phase's forward: DDP-wrapped and/or compiled as configured."""
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [dist.device.index] if dist.device.type == "cuda" else None
        # Batches without faces leave the student unused: DDP must tolerate unused parameters.
        module = DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)
    if compile_module:
        module = torch.compile(module)
    return module
