"""Where one training step's time goes, before guessing at speed levers: the shared training step
(engine.py) on its own engine.

    python tools/profile_step.py               # a GPU box: eager; --compile [MODE]: compiled
    python tools/profile_step.py --device cpu --subset 256 --bs 32 --warmup 2 --steps 3   # on a CPU

Three phases over the training loader: --warmup steps (cuDNN autotuning, compilation), --steps steps
timed without the profiler, --steps steps under torch.profiler. It prints
  - step ms: the synchronised time per step, and host ms: the CPU time spent issuing one step (the
    batch's augmentation, Python, Ignite, dispatch, kernel launches). Host close to step means the
    GPU waits for the CPU (launch-bound: compile or CUDA graphs help); host well below step means
    the GPU is the limit;
  - the top operators by self device time (self CPU time on a CPU),
and writes OUT/profile.json (the numbers) and OUT/trace.json (open in chrome://tracing or Perfetto).
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from ignite.engine import Events  # noqa: E402

import config  # noqa: E402
import data  # noqa: E402
import engine  # noqa: E402
from cli import Parser, UserError, pick_device, run_cli  # noqa: E402
from files import write_json  # noqa: E402


def parse(argv):
    p = Parser(__doc__)
    config.add_args(p, config.COMMON, "width", "precision", "compile",
                    out=("runs/profile", "folder for profile.json and trace.json"))
    p.add_argument("--warmup", type=int, default=30,
                   help="steps before anything is measured (default: 30)")
    p.add_argument("--steps", type=int, default=20,
                   help="steps timed, then steps profiled (default: 20)")
    p.add_argument("--lr", type=float, default=0.1,
                   help="constant LR of the profiled steps (default: 0.1)")
    p.add_argument("--rows", type=int, default=25, help="operators in the table (default: 25)")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        raise UserError("--warmup and --steps must be at least 1")
    device = pick_device(args.device)
    cfg = config.from_args(args, device=device, precision=engine.resolve_precision(args.precision,
                                                                                   device))
    return args, cfg


def main(argv=None):
    args, cfg = parse(argv)
    cuda, precision = cfg.device == "cuda", cfg.precision
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    loader, _ = data.make_loaders(data.load_cifar10(cfg.data), cfg, cfg.device)
    raw = engine.build_model(cfg.seed, cfg.device, cfg.width)
    model = engine.compile_model(raw, cfg.compile)
    optimizer = engine.make_optimizer(raw, args.lr, 0.9, cfg.weight_decay)
    trainer = engine.create_trainer(model, optimizer, nn.CrossEntropyLoss(), cfg.device, precision)
    activities = [torch.profiler.ProfilerActivity.CPU]
    activities += [torch.profiler.ProfilerActivity.CUDA] if cuda else []
    prof = torch.profiler.profile(activities=activities)
    w, n = args.warmup, args.steps
    host, marks = [], {}

    @trainer.on(Events.GET_BATCH_STARTED)
    def started(engine):  # from the batch's augmentation on
        engine.state.t_issue = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def completed(engine):
        i = engine.state.iteration
        if w < i <= w + n:
            host.append(time.perf_counter() - engine.state.t_issue)  # no sync: the issuing alone
        if i in (w, w + n, w + 2 * n):
            sync()
            marks[i] = time.perf_counter()
        if i == w + n:
            prof.start()
        if i == w + 2 * n:
            prof.stop()
            engine.terminate()

    total = w + 2 * n
    trainer.run(loader, max_epochs=-(-total // len(loader)))
    step_ms = 1000 * (marks[w + n] - marks[w]) / n
    host_ms = 1000 * sum(host) / n
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out / "trace.json"))
    result = {"step_ms": step_ms, "host_ms": host_ms, "images_per_s": cfg.bs * 1000 / step_ms,
              "bs": cfg.bs, "compile": cfg.compile, "precision": precision, "warmup": w, "steps": n,
              "versions": engine.versions(cfg.device)}
    write_json(out / "profile.json", result)
    mode = f"compile {cfg.compile}" if cfg.compile else "eager"
    print(f"step {step_ms:.2f} ms ({precision}, synchronised, {result['images_per_s']:,.0f} img/s),"
          f" host {host_ms:.2f} ms/step issuing it ({100 * host_ms / step_ms:.0f} %); bs {cfg.bs}, "
          f"{mode} -> {out}")


if __name__ == "__main__":
    run_cli(main)
