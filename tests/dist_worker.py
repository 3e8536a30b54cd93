"""Run by test_distributed.py, with or without torchrun: two training steps (batch norm per process,
then synchronised) and one evaluation of a fixed model, each on the processes it was launched with;
rank 0 saves what they gave."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ignite.distributed as idist  # noqa: E402
import torch  # noqa: E402
from ignite.engine import Events  # noqa: E402

import data  # noqa: E402
import distributed  # noqa: E402
import engine  # noqa: E402
from config import Config  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"


def two_steps(arrays, sync_bn):
    """Two steps of the shared training step in float64: in float32 this network's first layers
    already differ by ~1 % between two summation orders at initialisation, which would hide what
    batch norm does."""
    rank, world = idist.get_rank(), idist.get_world_size()
    loader, _ = data.make_loaders(arrays, Config(bs=64, subset=128), "cpu", rank, world)
    # every layer still there, 1/16 of the work
    model = engine.build_model(0, "cpu", width=0.25).double()
    wrapped = distributed.wrap_model(model, torch.device("cpu"), sync_bn)
    optimizer = engine.make_optimizer(model, 0.2, 0.9, 5e-4)
    batches = [(x.double(), y) for x, y in loader]
    trainer = engine.create_trainer(wrapped, optimizer, torch.nn.CrossEntropyLoss(), "cpu")
    trainer.run(batches, max_epochs=1)
    return {k: v.clone() for k, v in model.state_dict().items()}


def evaluate(arrays):
    rank, world = idist.get_rank(), idist.get_world_size()
    _, loader = data.make_loaders(arrays, Config(bs=64, subset=199, eval_bs=40), "cpu", rank, world)
    evaluator = engine.create_evaluator(engine.build_model(3, "cpu", width=0.25), "cpu")
    preds = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED,
                                lambda e: preds.append(e.state.output[0].argmax(1)))
    evaluator.run(loader)
    return {**evaluator.state.metrics, "local_n": loader.n,
            "preds": distributed.gather(torch.cat(preds), loader.sizes),
            "labels": distributed.gather(loader.labels, loader.sizes)}


def ddp_alive():
    import gc

    return sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())


def work(local_rank, out):
    arrays = data.load_cifar10(DATA, download=False)
    result = {"world": idist.get_world_size(), "own_bn": two_steps(arrays, False),
              "sync_bn": two_steps(arrays, True),
              "eval": evaluate(arrays)}
    # a whole train.train() leaves its DDP wrapper alive in reference cycles, holding the process
    # group: release() must end it while the group still exists (train.main calls it before the
    # launcher destroys the group)
    import train

    train.train(Config(data=str(DATA), out=str(Path(out).parent / "run"), device="cpu", subset=64,
                       bs=32, epochs=2, peak_epoch=1, lr_min=0.01, lr_max=0.1, width=0.125,
                       precision="fp32"))
    result["ddp_before_release"] = ddp_alive()
    distributed.release()
    result["ddp_after_release"] = ddp_alive()
    if idist.get_rank() == 0:
        torch.save(result, out)


if __name__ == "__main__":
    with idist.Parallel(backend=distributed.backend("cpu")) as parallel:
        parallel.run(work, sys.argv[1])
