"""The training machinery train.py and lr_range.py share: the model as it runs (precision chosen per
device, memory layout, compilation), THE training step, the evaluator, and the per-epoch totals.
Nothing here reads flags or writes files."""
import platform

import ignite.distributed as idist
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from ignite.metrics import Accuracy, Loss

from cli import UserError
from config import PRECISIONS
from model import ResNet9

# iterations between EMA updates: 1/5 of the launch overhead, the same average over ~epochs
EMA_EVERY = 5


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def cpu_computes_bf16():
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX), which oneDNN's bf16
    convolutions use; without them bf16 is emulated and slower than float32."""
    probes = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(p is not None for p in probes):
        return any(p() for p in probes if p is not None)
    try:  # an older torch without the probes: the kernel's CPU flags (Linux)
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_precision(device):
    """What --precision auto picks: bf16 autocast where the hardware computes bf16 natively (GPUs of
    compute capability 8.0 and up: A100, H100, RTX 30xx/40xx; CPUs with AVX512-BF16 or AMX); fp16
    autocast with a gradient scaler on GPUs whose tensor cores have fp16 only (7.x: V100, T4);
    float32 elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        major = torch.cuda.get_device_capability(device)[0]
        return "bf16" if major >= 8 else "fp16" if major >= 7 else "fp32"
    return "bf16" if cpu_computes_bf16() else "fp32"


def resolve_precision(precision, device):
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision}")
    return auto_precision(device) if precision == "auto" else precision


def autocast(device, precision="fp32"):
    """The forward pass's autocast: matrix products and convolutions in bf16/fp16 with float32
    master weights, batch norm and loss (torch's autocast lists); a no-op at fp32."""
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision],
                          enabled=precision != "fp32")


def make_scaler(device, precision):
    """fp16's gradient scaler (fp16 gradients underflow without it); None for bf16 and fp32, which
    need none."""
    return torch.amp.GradScaler(torch.device(device).type) if precision == "fp16" else None


def build_model(seed, device, width=1.0):
    """The ResNet-9 (channels x width) with seeded initial weights on `device`, its weights
    channels-last like the images data.py makes: the fast layout of oneDNN's CPU convolutions at
    fp32 and bf16 alike (docs/speed.md) and of the GPUs' tensor cores."""
    torch.manual_seed(seed)
    model = ResNet9(width=width).to(device)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN times its algorithms once
    return model.to(memory_format=torch.channels_last)


def compile_model(model, mode, backend="inductor"):
    """torch.compile with STATIC shapes: the partial last batch of an epoch gets a graph of its own
    instead of switching every later full batch to a slower dynamic-shape graph. mode "" returns the
    model as it is."""
    if not mode:
        return model
    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=False,
                         backend=backend)


def make_optimizer(model, lr, momentum, weight_decay):
    """SGD with Nesterov momentum and weight decay on every parameter, as David Page ran it."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True,
                           weight_decay=weight_decay)


def create_trainer(model, optimizer, loss_fn, device, precision="fp32"):
    """THE training step, shared by train.py and lr_range.py. It returns device tensors only:
    nothing here waits for the GPU, so the CPU can run ahead queueing kernels (statistics are read
    once per epoch). At fp16 the trainer's `scaler` (a checkpoint saves it) scales the loss;
    elsewhere it is None."""
    scaler = make_scaler(device, precision)

    def step(engine, batch):
        x, y = batch
        model.train()
        with autocast(device, precision):
            logits = model(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:  # skips the step when a gradient overflowed, and adapts the scale
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return {"loss": loss.detach(), "correct": (logits.argmax(1) == y).sum(), "n": len(y)}

    trainer = Engine(step)
    trainer.scaler = scaler
    return trainer


def create_evaluator(model, device, precision="fp32", tta=False):
    """Accuracy and loss over a plain loader (Ignite's metrics, summed over every process); with
    tta, logits averaged with those of the horizontally flipped image."""

    def step(engine, batch):
        x, y = batch
        model.eval()
        with torch.inference_mode(), autocast(device, precision):
            # a copy: a CUDA-graphed model (--compile reduce-overhead) may hand back the same output
            # memory from its next call, which would silently turn the TTA average into the flipped
            # logits alone
            logits = model(x).to(torch.float32, copy=True)
            if tta:
                logits = (logits + model(x.flip(3)).to(torch.float32, copy=True)) / 2
        return logits, y

    evaluator = Engine(step)
    Accuracy().attach(evaluator, "accuracy")
    Loss(nn.CrossEntropyLoss()).attach(evaluator, "loss")
    return evaluator


def ema_momentum(half_life_epochs, iters_per_epoch):
    """Ignite's EMAHandler momentum (the weight of the CURRENT weights per update) for a half-life
    in epochs."""
    updates = half_life_epochs * iters_per_epoch / EMA_EVERY
    if updates < 1:
        raise UserError(f"--ema-half-life {half_life_epochs} is shorter than one EMA update "
                        f"({EMA_EVERY} of "
                        f"{iters_per_epoch} iterations per epoch): the average would be the "
                        "current weights")
    return 1 - 0.5 ** (1 / updates)


def attach_ema(trainer, model, half_life_epochs, iters_per_epoch):
    """Weight averaging with Ignite's EMAHandler (BN statistics averaged alongside the weights),
    updated every EMA_EVERY iterations; returns the averaged model, the one to evaluate."""
    momentum = ema_momentum(half_life_epochs, iters_per_epoch)
    ema = EMAHandler(model, momentum=momentum, handle_buffers="update")
    ema.attach(trainer, event=Events.ITERATION_COMPLETED(every=EMA_EVERY), warn_if_exists=False)
    return ema.ema_model


class Stamp:
    """What a checkpoint records about the network it holds (its width): saved with it as one more
    object, and checked on load, so a checkpoint of another network is refused in one line instead
    of a shape error."""

    def __init__(self, **facts):
        self.facts = facts

    def state_dict(self):
        return dict(self.facts)

    def load_state_dict(self, saved):
        if saved != self.facts:
            raise UserError(f"the checkpoint holds a network with {saved}, this run builds "
                            f"{self.facts}")


class NonFiniteLoss(Exception):
    pass


class EpochTotals:
    """Keeps the trainer's per-iteration loss and correct-count tensors (on the device, no kernel,
    no sync) and reduces them once at the end of the epoch, over every process: mean loss, accuracy
    and the first iteration whose loss was NaN/inf (the same answer on every process, so all of them
    stop together)."""

    def attach(self, trainer):
        trainer.add_event_handler(Events.EPOCH_STARTED, self.reset)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        return self

    def reset(self, engine):
        self.first_iteration = engine.state.iteration + 1
        self.losses, self.correct, self.sizes = [], [], []

    def update(self, engine):
        out = engine.state.output
        self.losses.append(out["loss"])
        self.correct.append(out["correct"])
        self.sizes.append(out["n"])

    def read(self):
        losses = torch.stack(self.losses).double()
        sizes = torch.tensor(self.sizes, device=losses.device, dtype=torch.float64)
        index = torch.arange(len(losses), device=losses.device, dtype=torch.float64)
        correct = torch.stack(self.correct).sum().double()
        sums = idist.all_reduce(torch.stack([(losses * sizes).sum(), correct, sizes.sum()]))
        bad = torch.where(torch.isfinite(losses), float("inf"), index).min()
        bad = idist.all_reduce(bad, op="MIN")
        # the host waits here, once per epoch
        loss_sum, correct, n, bad = torch.cat([sums, bad[None]]).tolist()
        return {"loss": loss_sum / n, "accuracy": correct / n,
                "first_bad": self.first_iteration + int(bad) if bad != float("inf") else -1}


def versions(device):
    import ignite
    import torchvision

    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "ignite": ignite.__version__, "gpu": gpu,
            "cpu": cpu_name(), "cpu_threads": torch.get_num_threads(), "commit": git_commit()}


def git_commit():
    """The code's commit (with -dirty for uncommitted changes) when it runs from a git checkout:
    what a result names so that anyone can check it out and run it again."""
    import subprocess
    from pathlib import Path

    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("-dirty" if dirty else "")) or None


def cpu_name():
    """The CPU's model name (Linux: /proc/cpuinfo), for the results that a CPU measured."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
