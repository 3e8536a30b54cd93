"""Many processes, one recipe: torchrun starts them, ignite.distributed (idist) joins them,
PyTorch's DistributedDataParallel averages their gradients. With one process every function here is
a no-op.

    torchrun --standalone --nproc_per_node 8 train.py @presets/gpu.txt --epochs 24 --bs 512
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        train.py @presets/gpu.txt

--bs stays the global batch: each of N processes takes its slice of every global batch
(data.Loader's shard), so iterations per epoch, schedule and LRs are those of one process. Batch
norm computes its statistics over the global batch (--sync-bn, the default), so N processes train
the one-process recipe. Backend: NCCL for --device cuda, gloo for cpu. An epoch's partial last batch
(336 images at 50,000 / 512) splits evenly over up to 16 processes; where it does not, the parts
differ by one image and DDP's equal-weight gradient average is off by that much for that step.
"""
import os

import ignite.distributed as idist
import torch
import torch.distributed as dist
import torch.nn as nn

from cli import UserError


def launched():
    """True under torchrun (or any launcher that sets the torch.distributed environment)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def env_world_size():
    """The number of processes the launcher started (1 without one), known before any process group
    exists."""
    return int(os.environ.get("WORLD_SIZE", 1))


def backend(device):
    return ("nccl" if device == "cuda" else "gloo") if launched() else None


def process_device(device):
    """This process's device: under torchrun with CUDA, the GPU of its local rank (idist made it
    current)."""
    several = idist.get_world_size() > 1
    return idist.device() if device == "cuda" and several else torch.device(device)


def launch(fn, cfg):
    """fn(cfg) in this process: alone, or in the process group of the processes torchrun started."""
    import logging

    if launched() and cfg.device == "cpu":
        # CPU processes must not touch the GPUs: ignite would give each one the GPU of its local
        # rank ("invalid device ordinal" on a box with fewer GPUs than processes)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    logging.getLogger("ignite.distributed.launcher.Parallel").setLevel(logging.WARNING)
    with idist.Parallel(backend=backend(cfg.device)) as parallel:  # one process without torchrun
        try:
            parallel.run(lambda local_rank, c: fn(c), cfg)
        finally:
            release()
        leave_together()


def check_batch(bs, world):
    if bs % world:
        raise UserError(f"--bs {bs} does not split evenly over {world} processes: use a multiple "
                        f"of {world}")


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) with a gradient: the gradient of a sum over processes is the sum of their
    gradients."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """Batch norm over the union of every process's batch, for CPU processes (gloo), where torch's
    SyncBatchNorm refuses to run. One all-reduce of the per-channel count, sum and sum of squares
    (in float64: E[x^2] - mean^2 loses digits in float32); its backward all-reduces their gradients,
    so each process gets the gradient of the global statistics."""

    def forward(self, x):
        grouped = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and grouped):
            return super().forward(x)
        c, xd = x.shape[1], x.double()
        count = torch.full((1,), xd.numel() / c, dtype=xd.dtype, device=x.device)
        local = torch.cat([xd.sum((0, 2, 3)), (xd * xd).sum((0, 2, 3)), count])
        totals = _SumOverProcesses.apply(local)
        n = totals[-1]
        mean = totals[:c] / n
        var = totals[c:2 * c] / n - mean * mean
        # the running statistics, as nn.BatchNorm2d keeps them (unbiased variance)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_((var * n / (n - 1)).to(self.running_var.dtype), self.momentum)
        y = (xd - mean[:, None, None]) * torch.rsqrt(var + self.eps)[:, None, None]
        return (y * self.weight[:, None, None] + self.bias[:, None, None]).to(x.dtype)


def convert_sync_bn(module):
    """Every BatchNorm2d becomes CPUSyncBatchNorm, with the same weight, bias and statistics
    tensors."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            sync = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum)
            for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                # the same tensors: an optimizer built before still owns them
                setattr(sync, key, getattr(child, key))
            setattr(module, name, sync)
        else:
            convert_sync_bn(child)
    return module


def wrap_model(model, device, sync_bn=False):
    """DistributedDataParallel over the processes (the model as it is with one). With sync_bn the
    batch norms compute their statistics over the global batch: torch's SyncBatchNorm on GPUs,
    CPUSyncBatchNorm on CPUs. (Not idist.auto_model: it hands DDP a GPU id whenever a GPU is
    visible, and its SyncBatchNorm needs one.)"""
    if idist.get_world_size() == 1:
        return model
    if sync_bn:
        cuda = device.type == "cuda"
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if cuda else convert_sync_bn(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def broadcast_buffers(model):
    """Rank 0's batch-norm statistics to every process (DDP only sends them at the next training
    step), so that every process evaluates exactly the model rank 0 checkpoints."""
    if idist.get_world_size() > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def gather(t, sizes):
    """Every process's tensor `t` (process r's has sizes[r] rows), concatenated in rank order, on
    every process."""
    if idist.get_world_size() == 1:
        return t
    # all_gather wants equal shapes: pad to the longest part, then cut each part back
    rows = max(sizes)
    padded = t.new_zeros((rows, *t.shape[1:]))
    padded[:len(t)] = t
    parts = idist.all_gather(padded)
    return torch.cat([parts[r * rows:r * rows + n] for r, n in enumerate(sizes)])


def release():
    """Free now what still holds the process group (the DDP wrapper and its reducer, the engines:
    reference cycles that only the garbage collector ends). Left for the interpreter's exit, after
    the group is destroyed, gloo's worker threads were torn down with the interpreter half gone,
    which now and then aborted a finished process ("terminate called without an active exception")
    and made torchrun stop the others mid-report."""
    import gc

    gc.collect()


def leave_together():
    """Every process waits here until the last one (rank 0, writing the final report) is done, so
    that no process leaves the group while another still works; then the launcher destroys the group
    on all of them at once."""
    if idist.get_world_size() > 1:
        idist.barrier()


def on_rank0(fn):
    """fn() on rank 0 alone while the others wait; every process gets its result, or raises its
    UserError."""
    if idist.get_world_size() == 1:
        return fn()
    box = [None]
    if idist.get_rank() == 0:
        try:
            box = [("ok", fn())]
        except UserError as e:
            box = [("error", str(e))]
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise UserError(value)
    return value
