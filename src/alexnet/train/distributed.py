"""Scaling out: data-parallel processes (``torchrun``) and the paper's two-tower model split.

Data parallel. ``torchrun --nproc-per-node N -m alexnet train ...`` (or across machines
with ``--nnodes``/``--rdzv-endpoint``) starts N copies; :func:`setup` joins them into
one process group - gloo on CPU, NCCL on CUDA - with a timeout, so that a rank that
dies makes every other rank's next collective fail with an error instead of waiting
forever (torchrun then stops the whole job and reports the failed rank, or restarts it
with ``--max-restarts``: see alexnet.train.rundir). Gradients are
averaged by ``DistributedDataParallel``; each rank sees ``batch_size / world_size``
images of every global batch; metrics are summed across ranks; only rank 0 writes.

Model parallel. The paper trained on two GTX 580s, each holding half of the kernels
("the GPUs communicate only in certain layers", section 3.2). :class:`TwoTowerModel`
places the two towers of a grouped :class:`~alexnet.models.AlexNet` on two devices:
grouped layers (conv2, conv4, conv5) run each tower on its own device; layers that
see both towers (conv3, fc6, fc7, fc8) gather the other tower's activations and each
device computes half of the output units; LRN exchanges the two neighbouring channels
across the tower boundary so that the result equals the grouped model exactly (the
paper normalised within each GPU; our grouped model normalises across all channels,
and the split model reproduces the grouped one, which is what the test checks).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"train.device = {requested!r}, but CUDA is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device: str = "", timeout_s: float = 300.0) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else a 1-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world <= 1:
        return DistContext(0, 1, 0, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(backend=backend, timeout=timeout, **_restart_store(rank, world, timeout),
                                **({"device_id": dev} if backend == "nccl" else {}))
    return DistContext(rank, world, local_rank, dev)


def _restart_store(rank: int, world: int, timeout: datetime.timedelta) -> dict:
    """On a torchrun restart, the process group's keys under a prefix of this attempt.

    torchrun's workers meet in the agent's store, and a restarted group finds there the keys
    the failed attempt left: gloo then read a dead worker's address and its connect failed
    (or waited for the timeout) in about one restart in two (tests/test_cluster.py). Empty
    (``init_method="env://"``, the default) on the first attempt and outside torchrun."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or "0"
    if attempt == "0" or "MASTER_ADDR" not in os.environ:
        return {}
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=not agent_store and rank == 0, timeout=timeout)
    return {"store": dist.PrefixStore(f"alexnet/attempt-{attempt}/", store), "rank": rank, "world_size": world}


def is_communication_failure(exc: BaseException) -> bool:
    """A collective failed because a peer died or timed out (gloo/NCCL report these as errors)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        w in text for w in ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "broken pipe"))


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.cpu().tolist()


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if it is true on any (used to stop all ranks at the same step)."""
    if not ctx.distributed:
        return flag
    return all_reduce_sum([1.0 if flag else 0.0], ctx)[0] > 0


class HostFlags:
    """Host-side facts every rank must act on at the same step - a stop request, a periodic
    checkpoint due by the clock - agreed without blocking and without touching the device.

        flags.send([stop.requested, clock_due])          # before a step
        loss = train_step(...)
        stopping, due = flags.receive([stop.requested, clock_due])   # after it: act on these

    One process: :meth:`receive` gives the flags as they are now. Several: :meth:`send` starts an
    asynchronous all-reduce on a CPU (gloo) group of their own, which travels while the step runs,
    and :meth:`receive` collects it, so every rank acts after the same step on what any rank had
    raised before it began, and no step waits for the GPU (on NCCL the default group would put the
    flags on the device: a host-device sync every step) or, in the steady state, for the other hosts."""

    def __init__(self, ctx: DistContext, timeout_s: float):
        self._group = (dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
                       if ctx.distributed else None)
        self._pending = None        # (work, values) of the exchange in flight

    def send(self, flags: list[bool]) -> None:
        if self._group is not None:
            values = torch.tensor([1.0 if f else 0.0 for f in flags], dtype=torch.float64)
            self._pending = (dist.all_reduce(values, group=self._group, async_op=True), values)

    def receive(self, flags: list[bool]) -> list[bool]:
        """Whether any rank raised each flag: ``flags`` with one process, else the exchange :meth:`send` started."""
        if self._pending is None:
            return list(flags)
        work, values = self._pending
        self._pending = None
        work.wait()
        return [v > 0 for v in values.tolist()]

    def close(self) -> None:
        if self._group is not None:
            dist.destroy_process_group(self._group)
            self._group = None


def on_main(fn, ctx: DistContext):
    """``fn()`` run by rank 0 alone, its result given to every rank.

    A :class:`UserError` on rank 0 is raised on every rank (the others would otherwise wait
    in the next collective until the timeout). For decisions every rank must share, such as
    whether to resume and from which file (the ranks of several nodes may not see the run
    folder at the same moment)."""
    if not ctx.distributed:
        return fn()
    outcome = None
    if ctx.is_main:
        try:
            outcome = ("ok", fn())
        except UserError as exc:
            outcome = ("error", str(exc))
    kind, value = broadcast_object(outcome, ctx)
    if kind == "error":
        raise UserError(value)
    return value


def all_gather_objects(obj, ctx: DistContext) -> list:
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, ctx: DistContext):
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- model parallel

class TwoTowerModel(nn.Module):
    """A grouped AlexNet with its two towers on two devices (the paper's two-GPU layout).

    Built from a grouped model (``groups=2``); :meth:`grouped_state_dict` gives the
    weights back in the grouped layout, so checkpoints stay interchangeable.
    """

    def __init__(self, model: nn.Module, devices: tuple[str, str] = ("cpu", "cpu")):
        super().__init__()
        if getattr(model, "groups", 1) != 2:
            raise UserError("model.parallel = 'towers' needs a two-tower model (model.kwargs.groups = 2)")
        self.devices = tuple(torch.device(d) for d in devices)
        self.plan: list[tuple[str, str, nn.Module | None]] = []   # (kind, name, module)
        self.towers = nn.ModuleList([nn.ModuleDict(), nn.ModuleDict()])
        self.source = {}        # layer name -> original module (for grouped_state_dict)
        for name, module in list(model.features.named_children()) + [("avgpool", model.avgpool)] + \
                list(model.classifier.named_children()):
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                kind = "grouped" if getattr(module, "groups", 1) == 2 else "full"
                for t in range(2):
                    self.towers[t][name] = self._half(module, t, kind).to(self.devices[t])
                self.source[name] = kind
                self.plan.append((kind, name, None))
            elif type(module).__name__ == "LocalResponseNorm" or isinstance(module, nn.LocalResponseNorm):
                self.plan.append(("lrn", name, module))
            else:
                self.plan.append(("each", name, module))
        self._module_names = [n for _, n, m in self.plan if m is not None]
        self.shared = nn.ModuleDict({n: m for _, n, m in self.plan if m is not None})
        self.num_classes = model.classifier.fc8.out_features

    @staticmethod
    def _half(module: nn.Module, t: int, kind: str) -> nn.Module:
        """Tower t's share: half of the output units (grouped convs also half the inputs)."""
        out = module.weight.shape[0]
        cut = out - out // 2            # an odd fc8 gives tower 0 the extra unit
        sl = slice(0, cut) if t == 0 else slice(cut, out)
        h = sl.stop - sl.start
        if isinstance(module, nn.Conv2d):
            in_ch = module.in_channels // 2 if kind == "grouped" else module.in_channels
            half = nn.Conv2d(in_ch, h, module.kernel_size, module.stride, module.padding)
        else:
            half = nn.Linear(module.in_features, h)
        with torch.no_grad():
            half.weight.copy_(module.weight[sl])
            half.bias.copy_(module.bias[sl])
        return half

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d0, d1 = self.devices
        parts = [x.to(d0), x.to(d1)]      # the first layer is "full": each tower sees the whole image
        first = True
        for kind, name, module in self.plan:
            if kind == "full":
                if first:
                    whole = parts
                else:   # the cross-GPU connection: each device gathers the other tower's activations
                    whole = [torch.cat([parts[0], parts[1].to(d0)], 1), torch.cat([parts[0].to(d1), parts[1]], 1)]
                parts = [self.towers[t][name](whole[t]) for t in range(2)]
                if name == "fc8":
                    return torch.cat([parts[0], parts[1].to(d0)], 1)
            elif kind == "grouped":
                parts = [self.towers[t][name](parts[t]) for t in range(2)]
            elif kind == "lrn":
                # Halo exchange: each tower borrows the n//2 nearest channels of the other.
                r = module.size // 2
                a, b = parts
                left = module(torch.cat([a, b[:, :r].to(d0)], 1))[:, : a.shape[1]]
                right = module(torch.cat([a[:, -r:].to(d1), b], 1))[:, r:]
                parts = [left, right]
            else:
                if name == "avgpool":
                    parts = [torch.flatten(module(p), 1) for p in parts]
                else:
                    parts = [module(p) for p in parts]
            first = first and kind not in ("full", "grouped")
        raise RuntimeError("model has no fc8")

    def grouped_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights in the grouped model's layout (``features.conv1.weight`` ...)."""
        state = {}
        for name in self.source:
            prefix = "classifier" if name.startswith("fc") else "features"
            for p in ("weight", "bias"):
                halves = [getattr(self.towers[t][name], p).detach().to(self.devices[0]) for t in range(2)]
                state[f"{prefix}.{name}.{p}"] = torch.cat(halves, 0)
        return state
