"""The training machinery train.py and lr_range.py share: the model as it runs (precision, memory layout,
compilation), THE training step, the evaluator, and the per-epoch totals. Nothing here reads flags or writes files."""
import platform

import ignite.distributed as idist
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from ignite.metrics import Accuracy, Loss

from cli import BN_WEIGHT, INIT, UserError
from model import LOGIT_SCALE, ResNet9

EMA_EVERY = 5  # iterations between EMA updates: 1/5 of the launch overhead, the same average over ~epochs


def gpu_path(device):
    """bf16 autocast and channels-last (tensor cores) on CUDA; a CPU runs float32, NCHW. One switch, so a CPU test
    can run the GPU code path."""
    return torch.device(device).type == "cuda"


def autocast(device):
    """bf16 autocast on the GPU path; a no-op on a CPU, where the same code runs in float32."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=gpu_path(device))


# the settings of a run (train.Config, lr_range.RangeConfig) that shape the network: model.ResNet9's arguments
NET_KEYS = ("width", "init", "logit_scale", "ghost_bn", "bn_weight")


def net_args(cfg):
    return {k: getattr(cfg, k) for k in NET_KEYS}


def build_model(seed, device, width=1.0, init=INIT, logit_scale=LOGIT_SCALE, ghost_bn=0, bn_weight=BN_WEIGHT):
    """The ResNet-9 (channels x width, logits x logit_scale, `init`: one of cli.INITS, ghost batch norm over groups
    of ghost_bn images, batch-norm weights learned or frozen) with seeded initial weights, on `device` in the layout
    it runs fastest."""
    torch.manual_seed(seed)
    model = ResNet9(width=width, init=init, logit_scale=logit_scale, ghost_bn=ghost_bn, bn_weight=bn_weight).to(device)
    if gpu_path(device):
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its algorithms once and keep the fastest
    return model


def compile_model(model, mode, backend="inductor"):
    """torch.compile with STATIC shapes: the partial last batch of an epoch gets a graph of its own instead of
    switching every later full batch to a slower dynamic-shape graph. mode "" returns the model as it is."""
    if not mode:
        return model
    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=False, backend=backend)


# The optimizer's defaults, for train.py and lr_range.py alike (the range test must see the run's training step).
WEIGHT_DECAY = 5e-4
BN_DECAY = True  # decay the 1-D parameters too
BN_LR_SCALE = 1.0  # the 1-D parameters' LR / the convolutions' LR


def make_optimizer(model, lr, momentum=0.9, weight_decay=WEIGHT_DECAY, bn_decay=BN_DECAY, bn_lr_scale=BN_LR_SCALE):
    """SGD with Nesterov momentum. The 1-D parameters (batch-norm weights and biases, the classifier's bias) form a
    second group when bn_decay=False (no weight decay on them) or bn_lr_scale != 1: their LR is then bn_lr_scale x
    the first group's at every step (airbench's bias scaler), and their decay / bn_lr_scale, so that the decay's
    pull per step (LR x decay) stays the same. Frozen parameters (requires_grad False) are left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not bn_decay or bn_lr_scale != 1:
        params = [{"params": [p for p in params if p.ndim > 1]},
                  {"params": [p for p in params if p.ndim <= 1], "lr": lr * bn_lr_scale, "lr_scale": bn_lr_scale,
                   "weight_decay": weight_decay / bn_lr_scale if bn_decay else 0.0}]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


def follow_lr(optimizer):
    """Every group with an lr_scale runs at the first group's LR (which the schedulers set) x that scale."""
    for group in optimizer.param_groups[1:]:
        if "lr_scale" in group:  # others keep whatever LR they were given
            group["lr"] = optimizer.param_groups[0]["lr"] * group["lr_scale"]


def create_trainer(model, optimizer, loss_fn, device):
    """THE training step, shared by train.py and lr_range.py. It returns device tensors only: nothing here waits
    for the GPU, so the CPU can run ahead queueing kernels (statistics are read once per epoch)."""

    def step(engine, batch):
        x, y = batch
        model.train()
        with autocast(device):
            logits = model(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        follow_lr(optimizer)  # here, after every scheduler of this iteration has set the LR
        optimizer.step()
        return {"loss": loss.detach(), "correct": (logits.argmax(1) == y).sum(), "n": len(y)}

    return Engine(step)


def create_evaluator(model, device, tta=False):
    """Accuracy and loss over a plain loader (Ignite's metrics, summed over every process); with tta, logits
    averaged with those of the horizontally flipped image."""

    def step(engine, batch):
        x, y = batch
        model.eval()
        with torch.inference_mode(), autocast(device):
            # a copy: a CUDA-graphed model (--compile reduce-overhead) may hand back the same output memory from
            # its next call, which would silently turn the TTA average into the flipped logits alone
            logits = model(x).to(torch.float32, copy=True)
            if tta:
                logits = (logits + model(x.flip(3)).to(torch.float32, copy=True)) / 2
        return logits, y

    evaluator = Engine(step)
    Accuracy().attach(evaluator, "accuracy")
    Loss(nn.CrossEntropyLoss()).attach(evaluator, "loss")
    return evaluator


@torch.no_grad()
def recompute_bn_stats(model, batches, device):
    """Every batch-norm layer's running mean and variance replaced by the plain average of its batch statistics
    over `batches` (weights untouched): the statistics of what those batches hold, not a momentum-0.1 trail of the
    augmented batches seen while the weights were still moving."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average over the batches
    was_training = model.training
    model.train()
    try:
        for x, _ in batches:
            with autocast(device):
                model(x)
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)


def ema_momentum(half_life_epochs, iters_per_epoch):
    """Ignite's EMAHandler momentum (the weight of the CURRENT weights per update) for a half-life in epochs."""
    updates = half_life_epochs * iters_per_epoch / EMA_EVERY
    if updates < 1:
        raise UserError(f"--ema-half-life {half_life_epochs} is shorter than one EMA update ({EMA_EVERY} of "
                        f"{iters_per_epoch} iterations per epoch): the average would be the current weights")
    return 1 - 0.5 ** (1 / updates)


def attach_ema(trainer, model, half_life_epochs, iters_per_epoch):
    """Weight averaging with Ignite's EMAHandler (BN statistics averaged alongside the weights), updated every
    EMA_EVERY iterations; returns the averaged model, the one to evaluate."""
    ema = EMAHandler(model, momentum=ema_momentum(half_life_epochs, iters_per_epoch), handle_buffers="update")
    ema.attach(trainer, event=Events.ITERATION_COMPLETED(every=EMA_EVERY), warn_if_exists=False)
    return ema.ema_model


class Stamp:
    """What a checkpoint records about the network it holds (its width): saved with it as one more object, and
    checked on load, so a checkpoint of another network is refused in one line instead of a shape error."""

    def __init__(self, **facts):
        self.facts = facts

    def state_dict(self):
        return dict(self.facts)

    def load_state_dict(self, saved):
        if saved != self.facts:
            raise UserError(f"the checkpoint holds a network with {saved}, this run builds {self.facts}")


class NonFiniteLoss(Exception):
    pass


class EpochTotals:
    """Keeps the trainer's per-iteration loss and correct-count tensors (on the device, no kernel, no sync) and
    reduces them once at the end of the epoch, over every process: mean loss, accuracy and the first iteration
    whose loss was NaN/inf (the same answer on every process, so all of them stop together)."""

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
        sums = idist.all_reduce(torch.stack([(losses * sizes).sum(), torch.stack(self.correct).sum().double(),
                                             sizes.sum()]))
        bad = idist.all_reduce(torch.where(torch.isfinite(losses), float("inf"), index).min(), op="MIN")
        loss_sum, correct, n, bad = torch.cat([sums, bad[None]]).tolist()  # the host waits here, once per epoch
        return {"loss": loss_sum / n, "accuracy": correct / n,
                "first_bad": self.first_iteration + int(bad) if bad != float("inf") else -1}


def versions(device):
    import ignite
    import torchvision

    gpu = torch.cuda.get_device_name(torch.device(device)) if torch.device(device).type == "cuda" else None
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "ignite": ignite.__version__, "gpu": gpu, "cpu": cpu_name(), "cpu_threads": torch.get_num_threads()}


def cpu_name():
    """The CPU's model name (Linux: /proc/cpuinfo), for the results that a CPU measured."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
