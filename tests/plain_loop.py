"""The recipe as README.md states it, in a plain PyTorch loop: no Ignite and none of train.py's
machinery, only the network (model.py) and the batches it is given. The LR and momentum are set by
hand at every iteration from the README's formula; test_plain_loop.py holds train.py to this loop,
so the README and the trainer cannot drift apart. Defaults are the README's: SGD with Nesterov
momentum 0.9 (constant), weight decay 5e-4 on every parameter, plain cross-entropy on the logits
(the softmax lives in the loss); weights channels-last; the forward pass under autocast at
`precision` (bf16 or fp16 with torch's gradient scaler), as train.py's --precision says."""
import torch
import torch.nn.functional as F

from model import ResNet9


def one_cycle(it, peak, last, start, top):
    """The README's one-cycle at iteration `it` (1-based): `start` at iteration 1, `top` at
    iteration `peak` (the last iteration of the peak epoch), back to `start` at iteration `last`,
    linear in between."""
    if it <= peak:
        return start + (top - start) * (it - 1) / (peak - 1)
    return top + (start - top) * (it - peak) / (last - peak)


def train_plain(epoch_batches, iters_per_epoch, epochs, peak_epoch, lr_min, lr_max, seed=0,
                width=1.0, momentum=(0.9, 0.9), label_smoothing=0.0, evaluate=None,
                precision="fp32", device="cpu"):
    """Train from the weights ResNet9 gets after torch.manual_seed(seed). `epoch_batches()` returns
    one epoch's (images, labels) batches; `evaluate(model)`, if given, runs after every epoch.
    Returns (model, per-epoch [(train loss, train accuracy, evaluate's result)])."""
    torch.manual_seed(seed)
    model = ResNet9(width=width).to(device, memory_format=torch.channels_last)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr_min, momentum=momentum[0], nesterov=True,
                                weight_decay=5e-4)
    peak, last, it, history = peak_epoch * iters_per_epoch, epochs * iters_per_epoch, 0, []
    for _ in range(epochs):
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in epoch_batches():
            it += 1
            for group in optimizer.param_groups:
                group["lr"] = one_cycle(it, peak, last, lr_min, lr_max)
                group["momentum"] = one_cycle(it, peak, last, momentum[0], momentum[1])
            model.train()
            with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            optimizer.zero_grad()
            scaler.scale(loss).backward()  # a no-op scaler unless fp16
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        history.append((loss_sum / seen, correct / seen, evaluate(model) if evaluate else None))
    return model, history


@torch.no_grad()
def evaluate_plain(model, batches, precision="fp32"):
    """(mean cross-entropy, accuracy) over the batches, in eval mode."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    for x, y in batches:
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return loss_sum / seen, correct / seen
