"""TensorBoard, through Ignite's TensorboardLogger: every run folder gets its event files, so
`tensorboard --logdir runs` lays all runs (seeds, widths, ablation variants) over each other while
they train.

What a training run logs (tag: step), every step counted in iterations so all curves share one axis:
  train/loss, train/accuracy, <test|val>/loss, <test|val>/accuracy, time/train_seconds,
  time/eval_seconds: per epoch, at the epoch's last iteration; schedule/lr, schedule/momentum: every
  iteration, as read back from the optimizer; final/accuracy, final/tta_accuracy: at the end;
  config: the run's settings as text. The range test logs into its own folder (lr_range/loss,
  lr_range/smoothed, lr_range/lr per sweep iteration, lr_range/lr_min, lr_range/lr_max, and its
  figure). Everything logged is already on the host when it is written: the epoch's totals are read
  once per epoch, and the per-iteration LR and momentum are written from the recorded trace at the
  epoch's end, so logging adds no GPU sync and no per-iteration work. A resumed run opens its writer
  with purge_step at the first iteration it redoes: what the killed run logged past its checkpoint
  (all of it, for a run restarted before its first checkpoint) is dropped, and the curves continue
  without duplicate points. Off when the tensorboard package is missing, unless asked for.
"""
from ignite.engine import Events

from cli import UserError

INSTALL = "pip install tensorboard"


def available():
    try:
        import torch.utils.tensorboard  # noqa: F401  (needs the tensorboard package)
    except ImportError:
        return False
    return True


def wanted(flag):
    """flag None (the default) -> on when tensorboard is installed; True -> on, or one line if it is
    not."""
    if flag is None:
        return available()
    if flag and not available():
        raise UserError(f"--tensorboard needs the tensorboard package: {INSTALL}")
    return flag


def open_logger(folder, purge_step=None):
    from ignite.handlers.tensorboard_logger import TensorboardLogger

    return TensorboardLogger(log_dir=str(folder), purge_step=purge_step)


def config_text(config):
    """The settings as a two-column markdown table (TensorBoard's text tab renders it)."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in config.items() if k != "versions")
    versions = ", ".join(f"{k} {v}" for k, v in config.get("versions", {}).items() if v)
    return f"| setting | value |\n|---|---|\n{rows}\n\n{versions}"


def attach_run(trainer, run, config, epochs_done=0):
    """Log a training run (report.Run) into its folder from the per-epoch history and the
    per-iteration trace that report.attach_monitor fills (attach after it: its epoch-end handler
    must have run). Returns the logger."""
    from ignite.handlers.tensorboard_logger import OutputHandler

    history, trace, iters_per_epoch = run.history, run.trace, run.n_iter
    # a resumed run drops what the killed one logged from the first iteration it redoes (from step
    # 0, the config too, when it restarts before its first checkpoint)
    purge = (epochs_done * iters_per_epoch + 1 if epochs_done else 0) if run.cfg.resume else None
    tb = open_logger(run.dir, purge_step=purge)
    if not epochs_done:
        tb.writer.add_text("config", config_text(config), 0)
    at_iteration = lambda engine, event: engine.state.iteration  # noqa: E731

    def epoch_values(keys):
        return lambda _: {name: history[-1][key] for name, key in keys}  # not the step's output

    eval_name = config.get("eval_set", "test")
    for tag, keys in [("train", [("loss", "train_loss"), ("accuracy", "train_acc")]),
                      (eval_name, [("loss", "eval_loss"), ("accuracy", "eval_acc")]),
                      ("time", [("train_seconds", "train_seconds"),
                                ("eval_seconds", "eval_seconds")])]:
        handler = OutputHandler(tag, output_transform=epoch_values(keys),
                                global_step_transform=at_iteration)
        tb.attach(trainer, handler, Events.EPOCH_COMPLETED)

    @trainer.on(Events.EPOCH_COMPLETED)
    def log_schedule(engine):
        for i in range(engine.state.iteration - iters_per_epoch, engine.state.iteration):
            tb.writer.add_scalar("schedule/lr", trace["lr"][i], i + 1)
            tb.writer.add_scalar("schedule/momentum", trace["momentum"][i], i + 1)

    return tb


def log_final(tb, summary, step):
    tb.writer.add_scalar("final/accuracy", summary["accuracy"], step)
    tb.writer.add_scalar("final/tta_accuracy", summary["tta_accuracy"], step)


def log_range_test(folder, result, figure):
    """The range test's mean loss, its smoothed curve and the LR per sweep iteration, LRMIN and
    LRMAX, the figure."""
    tb = open_logger(folder)
    for k, (lr, loss) in enumerate(zip(result["lrs"], result["losses"])):
        tb.writer.add_scalar("lr_range/loss", loss, k)
        tb.writer.add_scalar("lr_range/lr", lr, k)
    for k, s in enumerate(result["smoothed"]):
        tb.writer.add_scalar("lr_range/smoothed", s, k)
    tb.writer.add_scalar("lr_range/lr_min", result["lr_min"], 0)
    tb.writer.add_scalar("lr_range/lr_max", result["lr_max"], 0)
    tb.writer.add_figure("lr_range/curve", figure, 0)
    tb.close()
