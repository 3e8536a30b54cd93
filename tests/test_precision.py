"""The precision each device computes in: the choice "auto" makes, and bf16 and fp16 run end to end
(on a CPU, as on a GPU)."""
import json
import math

import pytest
import torch

import engine
import train
from config import Config
from conftest import DATA


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_end_to_end(tmp_path, precision):
    """The GPUs' paths run on the CPU too (torch's CPU autocast, fp16's gradient scaler): the step,
    EMA, both evaluators, the NaN check and the checkpoint cope with bf16/fp16 activations, and the
    weights stay float32."""
    import matplotlib

    matplotlib.use("Agg")
    with engine.autocast("cpu", precision):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == engine.DTYPES[precision]
    weight = engine.build_model(0, "cpu", width=0.25).prep[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    cfg = Config(data=str(DATA), out=str(tmp_path / "run"), device="cpu", subset=64, bs=16,
                 epochs=2, peak_epoch=1, lr_min=0.01, lr_max=0.1, ema_half_life=1.5,
                 label_smoothing=0.1, width=0.25, precision=precision, tensorboard=False)
    summary = train.train(cfg)
    epochs = json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]
    assert all(math.isfinite(e["train_loss"]) and math.isfinite(e["eval_loss"]) for e in epochs)
    assert 0 <= summary["accuracy"] <= 1 and 0 <= summary["tta_accuracy"] <= 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == precision
    state = torch.load(tmp_path / "run" / "checkpoint_2.pt", weights_only=True)
    master = [v for v in state["model"].values() if v.is_floating_point()]
    assert all(v.dtype == torch.float32 for v in master)  # the weights the optimizer updates
    assert ("scaler" in state) == (precision == "fp16")
    assert state.get("scaler", {"scale": 1.0})["scale"] > 0


@pytest.mark.parametrize("cuda, capability, cpu_bf16, picked", [
    (True, (9, 0), False, "bf16"), (True, (8, 0), False, "bf16"),  # H100/H200, A100: bf16 cores
    (True, (7, 5), True, "fp16"), (True, (7, 0), True, "fp16"),  # T4, V100: fp16 tensor cores only
    (True, (6, 0), True, "fp32"),  # P100: no tensor cores
    (False, None, True, "bf16"), (False, None, False, "fp32"),  # CPUs with AVX512-BF16 and without
])
def test_auto_precision_follows_what_the_device_computes(monkeypatch, cuda, capability, cpu_bf16,
                                                         picked):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(engine, "cpu_computes_bf16", lambda: cpu_bf16)
    device = "cuda" if cuda else "cpu"
    assert engine.resolve_precision("auto", device) == picked
    assert engine.resolve_precision("fp32", device) == "fp32"  # a flag forces the choice
    assert (engine.make_scaler("cpu", picked) is not None) == (picked == "fp16")


def test_cpu_bf16_probe_reads_the_cpu_flags(monkeypatch, tmp_path):
    import builtins

    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)  # an older torch: /proc/cpuinfo decides
    real_open = builtins.open
    cpuinfo = tmp_path / "cpuinfo"
    for flags, expected in (("fpu avx512f avx512_bf16 sse", True), ("fpu amx_bf16", True),
                            ("fpu avx512f", False)):
        cpuinfo.write_text(f"model name : X\nflags : {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(
            cpuinfo if f == "/proc/cpuinfo" else f, *a, **k))
        assert engine.cpu_computes_bf16() is expected
