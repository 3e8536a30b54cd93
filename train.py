"""Train the ResNet-9 on CIFAR-10 with a one-cycle learning rate whose bounds come from the LR range test.

    python train.py --epochs 24 --bs 512            # GPU: the real run
    python train.py --subset 512 --epochs 2 --peak-epoch 1 --device cpu   # a CPU smoke run in seconds

The recipe (every trick named): SGD with Nesterov momentum and weight decay 5e-4; one-cycle LR as an Ignite
PiecewiseLinear stepped per iteration, LRMIN at iteration 0 -> LRMAX at the end of epoch `peak` -> LRMIN at the
last iteration (no annihilation: it never goes below LRMIN); momentum cycled inversely 0.95 -> 0.85 -> 0.95;
logits x0.125 (model.py); GPU-resident data with batched crop/flip/cutout (data.py); bf16 autocast and
channels-last on CUDA, float32 on a CPU. LRMIN and LRMAX come from lr_range.json (lr_range.py), which this
script runs itself when there is none for this batch size.
Results: see README.md (GPU accuracy and timings are measured by scripts/, not claimed here).

A run writes into --out (default: a fresh runs/YYYYmmdd-HHMMSS): config.json, metrics.json, curves.png, lr.png,
misclassified.png, confusion.png and checkpoint_<epoch>.pt; `--resume DIR` continues a killed run exactly.
"""
import argparse
import dataclasses
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, EMAHandler, PiecewiseLinear, Timer
from ignite.metrics import Accuracy, Loss

import data
from data import UserError
from model import ResNet9


@dataclasses.dataclass
class Config:
    """Every setting of a run; saved as config.json. Learning rates are per-sample-mean-loss SGD rates."""
    data: str = "data"
    out: str = ""  # "" -> a fresh runs/<timestamp>
    device: str = "cpu"
    seed: int = 0
    bs: int = 512
    subset: int = 0  # >0: first N train and N test images
    val: int = 0  # >0: hold out the last N training images and evaluate on them instead of the test set
    epochs: int = 24
    peak_epoch: int = 5
    lr_min: float | None = None  # None -> found by the LR range test
    lr_max: float | None = None
    lr_json: str = "runs/lr_range/lr_range.json"
    momentum_max: float = 0.95  # at the start and the end of the cycle
    momentum_min: float = 0.85  # at the LR peak
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    ema: float = 0.0  # >0: evaluate an exponential moving average of the weights, updated every EMA_EVERY steps
    eval_bs: int = 1000
    compile: str = ""  # "" = eager; else a torch.compile mode from COMPILE_MODES
    save_every: int = 1  # epochs between checkpoints
    resume: str = ""


# ---------------------------------------------------------------------------------------------- schedule
# The one source of truth for every schedule: triangle.py draws these, the trainer runs them, the tests check them.


def one_cycle_milestones(iters_per_epoch, epochs, peak_epoch, lr_min, lr_max, momentum_max=0.95, momentum_min=0.85):
    """(lr, momentum) milestones in iterations for Ignite's PiecewiseLinear: LR up for `peak_epoch` epochs, then
    down so that the LAST iteration runs at exactly lr_min (event index = iteration - 1)."""
    peak, last = peak_epoch * iters_per_epoch, epochs * iters_per_epoch - 1
    return ([(0, lr_min), (peak, lr_max), (last, lr_min)],
            [(0, momentum_max), (peak, momentum_min), (last, momentum_max)])


def triangular_milestones(base_lr, max_lr, stepsize, cycles):
    """Smith's triangular cyclic LR (2015): base -> max over `stepsize` iterations, back over the next, repeated."""
    return [(i * stepsize, max_lr if i % 2 else base_lr) for i in range(2 * cycles + 1)]


def simulate(milestones, num_events):
    """The values the trainer's PiecewiseLinear would apply at event indices 0..num_events-1, without an optimizer."""
    return [v for _, v in PiecewiseLinear.simulate_values(num_events, param_name="lr", milestones_values=milestones)]


# ---------------------------------------------------------------------------------------------- model, step, engines


def gpu_path(device):
    """bf16 autocast and channels-last (tensor cores) on CUDA; a CPU runs float32, NCHW. One switch, so a CPU test
    can run the GPU code path."""
    return torch.device(device).type == "cuda"


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


def add_compile_arg(p, what="the model"):
    p.add_argument("--compile", nargs="?", const="default", default="", choices=COMPILE_MODES, metavar="MODE",
                   help=f"torch.compile {what}, optionally with a mode: " + ", ".join(COMPILE_MODES) +
                   " (default: off, eager; bare --compile = default)")


def build_model(seed, device, compile=""):
    """(raw model, model to call): the second is torch.compile'd with mode `compile` unless that is ""."""
    torch.manual_seed(seed)
    model = ResNet9().to(device)
    if gpu_path(device):
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its algorithms once and keep the fastest
    return model, (torch.compile(model, mode=compile) if compile else model)


def make_optimizer(model, lr, momentum=0.9, weight_decay=5e-4):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


def autocast(device):
    """bf16 autocast on the GPU path; a no-op on a CPU, where the same code runs in float32."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=gpu_path(device))


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
        optimizer.step()
        return {"loss": loss.detach(), "correct": (logits.argmax(1) == y).sum(), "n": len(y)}

    return Engine(step)


def create_evaluator(model, device, tta=False):
    """Accuracy and loss over a plain loader; with tta, logits averaged with the horizontally flipped image."""

    def step(engine, batch):
        x, y = batch
        model.eval()
        with torch.inference_mode(), autocast(device):
            logits = model(x)
            if tta:
                logits = (logits + model(x.flip(3))) / 2
        return logits.float(), y

    evaluator = Engine(step)
    Accuracy().attach(evaluator, "accuracy")
    Loss(nn.CrossEntropyLoss()).attach(evaluator, "loss")
    return evaluator


def attach_one_cycle(trainer, optimizer, lr_milestones, momentum_milestones):
    """The two PiecewiseLinear schedulers, stepped at every iteration's start, and the read-back of the LR and
    momentum the optimizer then runs with. Returns (lr_sched, mom_sched, trace)."""
    lr_sched = PiecewiseLinear(optimizer, "lr", lr_milestones)
    mom_sched = PiecewiseLinear(optimizer, "momentum", momentum_milestones)
    trainer.add_event_handler(Events.ITERATION_STARTED, lr_sched)
    trainer.add_event_handler(Events.ITERATION_STARTED, mom_sched)
    trace = {"lr": [], "momentum": []}  # read back from the optimizer: what was applied, not what was planned

    @trainer.on(Events.ITERATION_STARTED)
    def record_schedule(engine):
        trace["lr"].append(optimizer.param_groups[0]["lr"])
        trace["momentum"].append(optimizer.param_groups[0]["momentum"])

    return lr_sched, mom_sched, trace


class EpochTotals:
    """Keeps the trainer's per-iteration loss and correct-count tensors (on the device, no kernel, no sync) and
    reduces them once at the end of the epoch: mean loss, accuracy and the first iteration whose loss was NaN/inf."""

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
        losses = torch.stack(self.losses).float()
        sizes = torch.tensor(self.sizes, device=losses.device, dtype=torch.float32)
        bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
        n = sum(self.sizes)
        return {"loss": float((losses * sizes).sum()) / n, "accuracy": float(torch.stack(self.correct).sum()) / n,
                "first_bad": self.first_iteration + bad[0] if bad else -1}


EMA_EVERY = 5  # iterations between EMA updates: 1/5 of the launch overhead, the same average over ~epochs


class NonFiniteLoss(Exception):
    pass


# ---------------------------------------------------------------------------------------------- LRs


def resolve_lrs(cfg, arrays):
    """(lr_min, lr_max, source): flags win; else lr_range.json if it was made with this batch size, subset and
    validation split; else run the range test now, on the training images only, into the run folder."""
    if cfg.lr_min is not None and cfg.lr_max is not None:
        return cfg.lr_min, cfg.lr_max, "flags"
    found, source = None, None
    path = Path(cfg.lr_json)
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            match = {k: saved.get(k) for k in ("bs", "subset", "val")} == {"bs": cfg.bs, "subset": cfg.subset,
                                                                        "val": cfg.val}
        except (json.JSONDecodeError, OSError) as e:
            raise UserError(f"{path}: unreadable LR range result ({e}); delete it or run lr_range.py again") from None
        if match:
            found, source = saved, str(path)
        else:
            print(f"{path} was made with other settings (bs/subset/val); running the range test for this run")
    if found is None:
        import lr_range  # imported here: lr_range imports this module for the shared training step

        found = lr_range.run_range_test(lr_range.RangeConfig(
            data=cfg.data, out=cfg.out, device=cfg.device, seed=cfg.seed, bs=cfg.bs, subset=cfg.subset,
            val=cfg.val, weight_decay=cfg.weight_decay), arrays=arrays)
        source = str(Path(cfg.out) / "lr_range.json")
    lr_min = cfg.lr_min if cfg.lr_min is not None else found["lr_min"]
    lr_max = cfg.lr_max if cfg.lr_max is not None else found["lr_max"]
    return lr_min, lr_max, source


def check_config(cfg):
    if cfg.epochs <= 0:
        raise UserError(f"--epochs must be positive, got {cfg.epochs}")
    if not 0 < cfg.peak_epoch < cfg.epochs:
        raise UserError(f"--peak-epoch must be between 1 and epochs-1 = {cfg.epochs - 1}, got {cfg.peak_epoch}")
    for name in ("lr_min", "lr_max"):
        v = getattr(cfg, name)
        if v is not None and (v < 0 or not math.isfinite(v)):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
    if cfg.lr_max is not None and cfg.lr_max == 0:
        raise UserError("--lr-max must be > 0")
    if cfg.lr_min is not None and cfg.lr_max is not None and cfg.lr_min >= cfg.lr_max:
        raise UserError(f"--lr-min ({cfg.lr_min}) must be below --lr-max ({cfg.lr_max})")
    if not (0 < cfg.momentum_min < 1 and 0 < cfg.momentum_max < 1):
        raise UserError(f"--momentum values must be in (0, 1) for Nesterov SGD, got {cfg.momentum_max} {cfg.momentum_min}")
    if not 0 <= cfg.ema < 1:
        raise UserError(f"--ema must be in [0, 1), got {cfg.ema}")
    if not 0 <= cfg.label_smoothing < 1:
        raise UserError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.save_every <= 0 or cfg.eval_bs <= 0 or cfg.val < 0:
        raise UserError("--save-every and --eval-bs must be positive, --val >= 0")


# ---------------------------------------------------------------------------------------------- artefacts


def plot_curves(history, path):
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    name = history[0].get("eval_name", "test") if history else "test"
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train (augmented)")
    a.plot(ep, [h["eval_loss"] for h in history], "o-", label=name)
    b.plot(ep, [100 * h["train_acc"] for h in history], "o-", label="train (augmented)")
    b.plot(ep, [100 * h["eval_acc"] for h in history], "o-", label=name)
    a.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    b.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    data.save_figure(fig, path)
    plt.close(fig)


def plot_lr(trace, iters_per_epoch, path):
    """The LR and momentum the optimizer actually ran with, per iteration (read back from its param group)."""
    import matplotlib.pyplot as plt

    fig, a = plt.subplots(figsize=(8, 4))
    it = range(1, len(trace["lr"]) + 1)
    a.plot(it, trace["lr"], color="C0")
    a.set(xlabel=f"iteration ({iters_per_epoch} per epoch)", ylabel="learning rate", title="schedule as applied")
    a.yaxis.label.set_color("C0")
    m = a.twinx()
    m.plot(it, trace["momentum"], color="C1")
    m.set_ylabel("momentum", color="C1")
    a.grid(alpha=0.3)
    data.save_figure(fig, path)
    plt.close(fig)


def plot_predictions(images, labels, preds, path_mis, path_conf, name):
    import matplotlib.pyplot as plt

    k = len(data.CLASSES)
    conf = torch.bincount(labels * k + preds, minlength=k * k).reshape(k, k).numpy()
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(conf, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if conf[i, j] > conf.max() / 2 else "black")
    ax.set_xticks(range(k), data.CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(k), data.CLASSES)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix ({name}, {len(labels)} images)")
    data.save_figure(fig, path_conf)
    plt.close(fig)

    wrong = (preds != labels).nonzero().flatten()[:40].tolist()
    fig, axes = plt.subplots(5, 8, figsize=(12, 8))
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[i])
        ax.set_title(f"{data.CLASSES[labels[i]]}\n-> {data.CLASSES[preds[i]]}", fontsize=8, color="C3")
    fig.suptitle(f"misclassified {name} images (true -> predicted), {int((preds != labels).sum())} in all")
    data.save_figure(fig, path_mis)
    plt.close(fig)


def versions(device):
    import ignite
    import torchvision

    gpu = torch.cuda.get_device_name() if torch.device(device).type == "cuda" else None
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "ignite": ignite.__version__, "gpu": gpu, "cpu": platform.processor() or platform.machine()}


# ---------------------------------------------------------------------------------------------- the run


def fresh_run_dir():
    base = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    out, i = base, 1
    while out.exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out


def latest_checkpoint(run_dir):
    found = sorted(Path(run_dir).glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[-1]))
    return found[-1] if found else None


def train(cfg):
    """Run (or resume) one training run; returns its summary dict. Raises UserError on bad input."""
    t_start = time.perf_counter()
    # ignite logs an exception before re-raising it; ours are reported in one line by run_cli
    logging.getLogger("ignite.engine.engine.Engine").setLevel(logging.CRITICAL)
    device = torch.device(cfg.device)
    run_dir = Path(cfg.out)
    arrays = data.load_cifar10(cfg.data)
    train_loader, eval_loader = data.make_loaders(arrays, cfg.bs, device, cfg.seed, cfg.subset, cfg.val, cfg.eval_bs)
    if cfg.resume:
        saved = json.loads((run_dir / "config.json").read_text())
        lr_min, lr_max, lr_source = saved["lr_min_used"], saved["lr_max_used"], saved["lr_source"]
    else:
        lr_min, lr_max, lr_source = resolve_lrs(cfg, arrays)
    if not 0 <= lr_min < lr_max:
        raise UserError(f"LR bounds must satisfy 0 <= LRMIN < LRMAX, got {lr_min:.4g} and {lr_max:.4g} from {lr_source}")
    run_dir.mkdir(parents=True, exist_ok=True)  # only now: bad data or LRs leave no empty run folder behind

    raw_model, model = build_model(cfg.seed, device, cfg.compile)
    optimizer = make_optimizer(raw_model, lr_min, cfg.momentum_max, cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    trainer = create_trainer(model, optimizer, loss_fn, device)
    eval_model, extra = model, {}
    if cfg.ema:  # weight averaging: Ignite's EMAHandler, BN statistics averaged alongside the weights
        ema = EMAHandler(raw_model, momentum=cfg.ema, handle_buffers="update")
        ema.attach(trainer, event=Events.ITERATION_COMPLETED(every=EMA_EVERY), warn_if_exists=False)
        eval_model, extra = ema.ema_model, {"ema_model": ema.ema_model}
    evaluator = create_evaluator(eval_model, device)

    n_iter = len(train_loader)
    lr_ms, mom_ms = one_cycle_milestones(n_iter, cfg.epochs, cfg.peak_epoch, lr_min, lr_max,
                                         cfg.momentum_max, cfg.momentum_min)
    lr_sched, mom_sched, trace = attach_one_cycle(trainer, optimizer, lr_ms, mom_ms)
    totals = EpochTotals().attach(trainer)
    sync = (lambda _: torch.cuda.synchronize()) if device.type == "cuda" else (lambda _: None)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, sync)  # before the timer: GPU work is asynchronous
    timer = Timer()
    timer.attach(trainer, start=Events.EPOCH_STARTED, resume=Events.EPOCH_STARTED, pause=Events.EPOCH_COMPLETED,
                 step=Events.EPOCH_COMPLETED)
    history = []
    config = {**dataclasses.asdict(cfg), "lr_min_used": lr_min, "lr_max_used": lr_max, "lr_source": lr_source,
              "iters_per_epoch": n_iter, "eval_set": eval_loader.name, "versions": versions(device),
              "command": " ".join(sys.argv)}

    def write_metrics(**extra_fields):
        data.write_json(run_dir / "metrics.json", {"epochs": history, "per_iteration": trace, **extra_fields})

    def write_plots():  # at the end only: matplotlib costs more than a GPU epoch
        if history:
            plot_curves(history, run_dir / "curves.png")
        if trace["lr"]:
            plot_lr(trace, n_iter, run_dir / "lr.png")

    @trainer.on(Events.EPOCH_COMPLETED)
    def end_of_epoch(engine):
        stats = totals.read()  # the one host sync of the epoch's training
        if stats["first_bad"] >= 0:
            it = stats["first_bad"]
            raise NonFiniteLoss(f"loss became NaN/inf at epoch {engine.state.epoch}, iteration {it} "
                                f"({(it - 1) % n_iter + 1} of the epoch) with LR {trace['lr'][it - 1]:.4g}: "
                                "lower --lr-max or check the data")
        t_train = timer.value()
        t0 = time.perf_counter()
        evaluator.run(eval_loader)
        m = evaluator.state.metrics
        history.append({"epoch": engine.state.epoch, "train_loss": stats["loss"], "train_acc": stats["accuracy"],
                        "eval_loss": m["loss"], "eval_acc": m["accuracy"], "eval_name": eval_loader.name,
                        "lr": trace["lr"][-1], "momentum": trace["momentum"][-1],
                        "train_seconds": t_train, "eval_seconds": time.perf_counter() - t0})
        print(row(history[-1], header=len(history) == 1 and not cfg.resume), flush=True)
        write_metrics()

    to_save = {"model": raw_model, "optimizer": optimizer, "trainer": trainer, "lr_sched": lr_sched,
               "mom_sched": mom_sched, **extra}
    saver = Checkpoint(to_save, DiskSaver(str(run_dir), require_empty=False), n_saved=1,
                       global_step_transform=lambda e, _: e.state.epoch)
    # saved after the metrics: a kill between the two leaves metrics one epoch ahead, which resume trims
    trainer.add_event_handler(Events.EPOCH_COMPLETED(every=cfg.save_every) | Events.COMPLETED, saver)

    if cfg.resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise UserError(f"--resume {run_dir}: no checkpoint_*.pt there to resume from")
        Checkpoint.load_objects(to_save, torch.load(ckpt, map_location=device, weights_only=False))
        done = trainer.state.epoch
        old = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
        history[:] = [h for h in old.get("epochs", []) if h["epoch"] <= done]
        for k in trace:
            trace[k][:] = old.get("per_iteration", {}).get(k, [])[: done * n_iter]
        train_loader.epoch = done  # the loader's shuffle/augmentation for epoch done+1, as in an unbroken run
        print(f"resuming {run_dir} from {ckpt.name} (epoch {done} of {cfg.epochs})")
    else:
        print_config(config)
    data.write_json(run_dir / "config.json", config)

    if sys.stderr.isatty():
        from ignite.handlers import ProgressBar

        ProgressBar(persist=False).attach(trainer)
    t_loop = time.perf_counter()
    try:
        # (Ignite would restart a finished run from epoch 1: a complete run only gets its final report again)
        if trainer.state.epoch < cfg.epochs:
            trainer.run(train_loader, max_epochs=cfg.epochs)  # epochs, per-epoch evaluation, metrics, checkpoints
    except NonFiniteLoss as e:
        write_metrics()
        write_plots()
        raise UserError(str(e)) from None

    loop_seconds = time.perf_counter() - t_loop  # what the speed goal counts (this process's epochs only)
    # final report: plain and flip-TTA accuracy on the evaluation set, with the predictions for the figures
    preds = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: preds.append(e.state.output[0].argmax(1)))
    evaluator.run(eval_loader)
    final = dict(evaluator.state.metrics)
    tta = create_evaluator(eval_model, device, tta=True)
    tta.run(eval_loader)
    labels = eval_loader.labels.cpu()
    images = data.split_data(arrays, cfg.subset, cfg.val)[2]  # the evaluation images, as the loader took them
    plot_predictions(images, labels, torch.cat(preds).cpu(), run_dir / "misclassified.png", run_dir / "confusion.png",
                     eval_loader.name)
    write_plots()
    summary = {"eval_set": eval_loader.name, "accuracy": final["accuracy"], "loss": final["loss"],
               "tta_accuracy": tta.state.metrics["accuracy"], "epochs": cfg.epochs, "lr_min": lr_min,
               "lr_max": lr_max, "train_seconds": sum(h["train_seconds"] for h in history),
               "eval_seconds": sum(h["eval_seconds"] for h in history), "loop_seconds": loop_seconds,
               "wall_seconds": time.perf_counter() - t_start,
               "run_dir": str(run_dir)}
    write_metrics(final=summary)
    print(f"{eval_loader.name} accuracy {100 * summary['accuracy']:.2f} % (flip-TTA {100 * summary['tta_accuracy']:.2f} %)"
          f" after {cfg.epochs} epochs: train {summary['train_seconds']:.1f} s + eval {summary['eval_seconds']:.1f} s,"
          f" loop {loop_seconds:.1f} s, wall {summary['wall_seconds']:.1f} s -> {run_dir}")
    return summary


COLUMNS = [("epoch", "epoch", "{:>5d}"), ("train_loss", "train loss", "{:>10.4f}"),
           ("train_acc", "train acc", "{:>9.2%}"), ("eval_loss", "eval loss", "{:>9.4f}"),
           ("eval_acc", "eval acc", "{:>8.2%}"), ("lr", "lr", "{:>8.4f}"), ("momentum", "mom", "{:>5.3f}"),
           ("train_seconds", "train s", "{:>7.2f}"), ("eval_seconds", "eval s", "{:>6.2f}")]


def row(h, header=False):
    """One fixed-width line per epoch (eval = the test set unless --val)."""
    line = "  ".join(fmt.format(h[k]) for k, _, fmt in COLUMNS)
    if not header:
        return line
    head = "  ".join(f"{title:>{len(fmt.format(h[k]))}}" for k, title, fmt in COLUMNS)
    return head + "\n" + line


def print_config(config):
    print("config: " + ", ".join(f"{k}={v}" for k, v in config.items() if k not in ("versions", "command")))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in config["versions"].items() if v))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data.add_common_args(p, out_default="runs/<timestamp>", out_help="run folder; must not hold an earlier run")
    d = Config()
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs (default: 24)")
    p.add_argument("--peak-epoch", type=int, default=d.peak_epoch,
                   help="epoch at whose end the LR peaks at LRMAX (default: 5)")
    p.add_argument("--lr-min", type=float, default=None, help="LRMIN, start and end of the cycle (default: from the LR range test)")
    p.add_argument("--lr-max", type=float, default=None, help="LRMAX, the peak (default: from the LR range test)")
    p.add_argument("--lr-json", default=d.lr_json,
                   help=f"range-test result to take LRMIN/LRMAX from; run when missing (default: {d.lr_json})")
    p.add_argument("--resume", default="", metavar="DIR", help="continue the killed run in DIR from its last checkpoint")
    p.add_argument("--val", type=int, default=0, metavar="N",
                   help="evaluate on the last N training images instead of the test set (for choosing settings)")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="cross-entropy label smoothing (default: 0)")
    p.add_argument("--ema", type=float, default=d.ema, metavar="M",
                   help=f"evaluate an EMA of the weights, momentum M per update, updated every {EMA_EVERY} steps (default: 0 = off)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="SGD weight decay (default: 5e-4)")
    p.add_argument("--momentum", type=float, nargs=2, default=[d.momentum_max, d.momentum_min], metavar=("HI", "LO"),
                   help="momentum at the ends and at the peak of the cycle (default: 0.95 0.85; equal = constant)")
    p.add_argument("--eval-bs", type=int, default=d.eval_bs, help="evaluation batch size (default: 1000)")
    add_compile_arg(p)
    p.add_argument("--save-every", type=int, default=d.save_every, help="epochs between checkpoints (default: 1)")
    return p.parse_args(argv)


def config_from_args(args):
    data.check_common_args(args)
    out = args.resume or args.out
    if out == "runs/<timestamp>":
        out = str(fresh_run_dir())
    if not args.resume and (Path(out) / "config.json").exists():
        raise UserError(f"{out} already holds a run: use --resume {out} to continue it, or another --out")
    if args.resume and not (Path(out) / "config.json").exists():
        raise UserError(f"--resume {out}: no config.json there, so no run to continue")
    if args.resume:  # the run's own settings; only the device may change
        saved = json.loads((Path(out) / "config.json").read_text())
        fields = {f.name for f in dataclasses.fields(Config)}
        cfg = Config(**{k: v for k, v in saved.items() if k in fields})
        return dataclasses.replace(cfg, resume=out, device=args.device, out=out)
    return Config(data=args.data, out=out, device=args.device, seed=args.seed, bs=args.bs, subset=args.subset,
                  val=args.val, epochs=args.epochs, peak_epoch=args.peak_epoch, lr_min=args.lr_min, lr_max=args.lr_max,
                  lr_json=args.lr_json, momentum_max=args.momentum[0], momentum_min=args.momentum[1],
                  weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, ema=args.ema, eval_bs=args.eval_bs,
                  compile=args.compile, save_every=args.save_every)


def main(argv=None):
    import matplotlib

    matplotlib.use("Agg")
    cfg = config_from_args(parse_args(argv))
    check_config(cfg)
    train(cfg)


if __name__ == "__main__":
    data.run_cli(main)
