"""What a training run shows and records: config.json, the per-epoch table on stdout and
metrics.json, the final evaluation (plain and flip-TTA) and the figures (curves.png, lr.png,
confusion.png, misclassified.png), drawn once at the end of a run since matplotlib costs more than a
GPU epoch."""
import dataclasses
import sys
import time
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Events
from ignite.handlers import Timer

import distributed
from data import CLASSES, split_data
from engine import EpochTotals, NonFiniteLoss, create_evaluator, versions
from files import save_figure, write_json

COLUMNS = [("epoch", "epoch", "{:>5d}"), ("train_loss", "train loss", "{:>10.4f}"),
           ("train_acc", "train acc", "{:>9.2%}"), ("eval_loss", "eval loss", "{:>9.4f}"),
           ("eval_acc", "eval acc", "{:>8.2%}"), ("lr", "lr", "{:>8.4f}"),
           ("momentum", "mom", "{:>5.3f}"), ("train_seconds", "train s", "{:>7.2f}"),
           ("eval_seconds", "eval s", "{:>6.2f}"), ("elapsed", "elapsed", "{:>8}"),
           ("left", "left", "{:>8}")]


@dataclasses.dataclass
class Run:
    """One training run as its handlers and reports see it."""
    cfg: object  # config.Config
    device: torch.device
    n_iter: int  # iterations per epoch
    lrs: tuple  # (LRMIN, LRMAX, where they came from, the range-test rule's version or None)
    eval_loader: object
    eval_model: object = None
    started: float = 0.0  # time.perf_counter() when the process began this run
    wall_before: float = 0.0  # a resumed run: its earlier processes' seconds, to their checkpoints
    history: list = dataclasses.field(default_factory=list)  # a dict per epoch: the table's rows
    trace: dict = dataclasses.field(default_factory=dict)  # per iteration: LR, momentum as applied
    write_metrics: object = None  # metrics.json's writer (attach_monitor)

    @property
    def dir(self):
        return Path(self.cfg.out)

    def wall(self):
        """The run's wall seconds so far, summed over the processes that ran it (each from its
        start to the last epoch it checkpointed), as the train seconds of its epochs are."""
        return self.wall_before + time.perf_counter() - self.started


def clock(seconds):
    """Seconds as h:mm:ss, for the progress columns of long runs."""
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def progress(seconds, done, total):
    """(elapsed, left) as h:mm:ss: `done` of `total` units took `seconds`; the rest at that pace."""
    return clock(seconds), clock(seconds / done * (total - done)) if done else "?"


def row(h, header=False):
    """One fixed-width line per epoch (eval = the test set unless --val), with the time so far and
    an estimate of the rest, so that a log file shows how far a long run is."""
    line = "  ".join(fmt.format(h[k]) for k, _, fmt in COLUMNS)
    if not header:
        return line
    head = "  ".join(f"{title:>{len(fmt.format(h[k]))}}" for k, title, fmt in COLUMNS)
    return head + "\n" + line


def config_line(config):
    settings = ", ".join(f"{k}={v}" for k, v in config.items() if k not in ("versions", "command"))
    made = ", ".join(f"{k} {v}" for k, v in config["versions"].items() if v)
    return f"config: {settings}\nversions: {made}"


def final_line(s):
    return (f"{s['eval_set']} accuracy {100 * s['accuracy']:.2f} % (flip-TTA "
            f"{100 * s['tta_accuracy']:.2f} %) after {s['epochs']} epochs: train "
            f"{s['train_seconds']:.1f} s + eval {s['eval_seconds']:.1f} s, loop "
            f"{s['loop_seconds']:.1f} s, wall {s['wall_seconds']:.1f} s -> {s['run_dir']}")


def plot_history(run):
    """curves.png and lr.png, from what the run has recorded so far."""
    if run.history:
        plot_curves(run.history, run.dir / "curves.png")
    if run.trace.get("lr"):
        plot_lr(run.trace, run.n_iter, run.dir / "lr.png")


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
    save_figure(fig, path)
    plt.close(fig)


def plot_lr(trace, iters_per_epoch, path):
    """The LR and momentum the optimizer actually ran with, per iteration (read back from it)."""
    import matplotlib.pyplot as plt

    fig, a = plt.subplots(figsize=(8, 4))
    it = range(1, len(trace["lr"]) + 1)
    a.plot(it, trace["lr"], color="C0")
    a.set(xlabel=f"iteration ({iters_per_epoch} per epoch)", ylabel="learning rate",
          title="schedule as applied")
    a.yaxis.label.set_color("C0")
    m = a.twinx()
    m.plot(it, trace["momentum"], color="C1")
    m.set_ylabel("momentum", color="C1")
    a.grid(alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)


def plot_predictions(run, images, labels, preds):
    """confusion.png and misclassified.png of the final evaluation."""
    import matplotlib.pyplot as plt

    k, name = len(CLASSES), run.eval_loader.name
    conf = torch.bincount(labels * k + preds, minlength=k * k).reshape(k, k).numpy()
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(conf, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if conf[i, j] > conf.max() / 2 else "black")
    ax.set_xticks(range(k), CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(k), CLASSES)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"confusion matrix ({name}, {len(labels)} images)")
    save_figure(fig, run.dir / "confusion.png")
    plt.close(fig)

    wrong = (preds != labels).nonzero().flatten()[:40].tolist()
    fig, axes = plt.subplots(5, 8, figsize=(12, 8))
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[i])
        ax.set_title(f"{CLASSES[labels[i]]}\n-> {CLASSES[preds[i]]}", fontsize=8, color="C3")
    fig.suptitle(f"misclassified {name} images (true -> predicted), "
                 f"{int((preds != labels).sum())} in all")
    save_figure(fig, run.dir / "misclassified.png")
    plt.close(fig)


def final_report(run, arrays, loop_seconds):
    """Plain and flip-TTA accuracy on the evaluation set, the figures, the summary in metrics.json
    and one line."""
    cfg, model, loader = run.cfg, run.eval_model, run.eval_loader
    preds = []
    distributed.broadcast_buffers(model)
    evaluator = create_evaluator(model, run.device, cfg.precision)
    evaluator.add_event_handler(Events.ITERATION_COMPLETED,
                                lambda e: preds.append(e.state.output[0].argmax(1)))
    evaluator.run(loader)
    final = dict(evaluator.state.metrics)
    tta = create_evaluator(model, run.device, cfg.precision, tta=True)
    tta.run(loader)
    preds = distributed.gather(torch.cat(preds), loader.sizes).cpu()
    labels = distributed.gather(loader.labels, loader.sizes).cpu()
    summary = {"eval_set": loader.name, "accuracy": final["accuracy"], "loss": final["loss"],
               "tta_accuracy": tta.state.metrics["accuracy"], "epochs": cfg.epochs,
               "lr_min": run.lrs[0], "lr_max": run.lrs[1],
               "train_seconds": sum(h["train_seconds"] for h in run.history),
               "eval_seconds": sum(h["eval_seconds"] for h in run.history),
               "loop_seconds": loop_seconds,  # this process's epochs with evaluation: speed goal's
               "wall_seconds": run.wall(),  # all processes, like train_seconds
               "world_size": idist.get_world_size(), "run_dir": str(run.dir)}
    if idist.get_rank() == 0:
        images = split_data(arrays, cfg.subset, cfg.val)[2]  # the evaluation images, as loaded
        plot_predictions(run, images, labels, preds)
        plot_history(run)
        run.write_metrics(final=summary)
        print(final_line(summary))
    return summary


def attach_monitor(trainer, evaluator, run):
    """Per epoch: the synchronised training time, the epoch's totals and NaN check, evaluation, one
    table row and metrics.json (rank 0, through run.write_metrics)."""
    rank, start = idist.get_rank(), {}
    totals = EpochTotals().attach(trainer)
    trainer.add_event_handler(Events.STARTED,
                              lambda e: start.update(t=time.perf_counter(), epoch=e.state.epoch))
    if run.device.type == "cuda":  # before the timer: GPU work is asynchronous
        trainer.add_event_handler(Events.EPOCH_COMPLETED,
                                  lambda _: torch.cuda.synchronize(run.device))
    timer = Timer()
    timer.attach(trainer, start=Events.EPOCH_STARTED, resume=Events.EPOCH_STARTED,
                 pause=Events.EPOCH_COMPLETED, step=Events.EPOCH_COMPLETED)

    def write_metrics(**extra):
        if rank == 0:
            write_json(run.dir / "metrics.json",
                       {"epochs": run.history, "per_iteration": run.trace, **extra})

    @trainer.on(Events.EPOCH_COMPLETED)
    def end_of_epoch(engine):
        stats = totals.read()  # the epoch's one host sync, the same on every process
        if stats["first_bad"] >= 0:
            it = stats["first_bad"]
            raise NonFiniteLoss(f"loss became NaN/inf at epoch {engine.state.epoch}, iteration "
                                f"{it} ({(it - 1) % run.n_iter + 1} of the epoch) with LR "
                                f"{run.trace['lr'][it - 1]:.4g}: lower --lr-max or check the data")
        t_train, t0 = timer.value(), time.perf_counter()
        distributed.broadcast_buffers(run.eval_model)
        evaluator.run(run.eval_loader)
        m = evaluator.state.metrics
        run.history.append({"epoch": engine.state.epoch, "train_loss": stats["loss"],
                            "train_acc": stats["accuracy"], "eval_loss": m["loss"],
                            "eval_acc": m["accuracy"], "eval_name": run.eval_loader.name,
                            "lr": run.trace["lr"][-1], "momentum": run.trace["momentum"][-1],
                            "train_seconds": t_train, "eval_seconds": time.perf_counter() - t0,
                            "wall_seconds": run.wall()})
        if rank == 0:  # this process's pace so far (a resumed run counts from where it resumed)
            done, total = engine.state.epoch - start["epoch"], run.cfg.epochs - start["epoch"]
            elapsed, left = progress(time.perf_counter() - start["t"], done, total)
            first = len(run.history) == 1 and not run.cfg.resume
            print(row({**run.history[-1], "elapsed": elapsed, "left": left}, header=first))
        write_metrics()

    run.write_metrics = write_metrics


def command(argv=None):
    """The command line as typed, the script named from the repository's root (where the checkout
    lies differs between machines; the flags stay as given)."""
    argv = sys.argv if argv is None else argv
    script, root = Path(argv[0]).resolve(), Path(__file__).resolve().parent
    name = script.relative_to(root) if script.is_relative_to(root) else Path(argv[0]).name
    return " ".join([str(name), *argv[1:]])


def write_config(run, world, original=None):
    """config.json: a new run's settings, LRs, versions and command. A resume keeps the `original`
    as it was and appends when, where and how it continued."""
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    here = {"at": now, "device": run.cfg.device, "world_size": world,
            "versions": versions(run.device), "command": command()}
    if original is not None:
        config = {**original, "resumes": original.get("resumes", []) + [here]}
    else:
        lr_min, lr_max, source, rule = run.lrs
        config = {**dataclasses.asdict(run.cfg), "lr_min_used": lr_min, "lr_max_used": lr_max,
                  "lr_source": source, "lr_rule_version": rule, "iters_per_epoch": run.n_iter,
                  "eval_set": run.eval_loader.name, "world_size": world, "started": now,
                  "versions": here["versions"], "command": here["command"]}
    if idist.get_rank() == 0:
        write_json(run.dir / "config.json", config)
    return config
