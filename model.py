"""The exercise's ResNet-9 for CIFAR-10 (David Page's "DAWNBench" network), 6,573,130 parameters.

    prep    conv3x3(3->64)    BN ReLU                                  32x32
    layer1  conv3x3(64->128)  MaxPool2 BN ReLU  + R1(conv-BN-ReLU x2)  16x16
    layer2  conv3x3(128->256) MaxPool2 BN ReLU                          8x8
    layer3  conv3x3(256->512) MaxPool2 BN ReLU  + R2(conv-BN-ReLU x2)   4x4
    head    MaxPool4 -> flatten -> Linear(512->10) -> x0.125             logits

Run `python model.py [--width W]` for the per-layer table. The network returns *logits*: the
exercise's softmax lives inside the cross-entropy loss (log-softmax + NLL, numerically stable);
`predict_proba` applies it once for users who want class probabilities. Never feed a softmax's
output to CrossEntropyLoss.
"""
import math

import torch
import torch.nn as nn

import config
from cli import Parser, check_positive, run_cli

# David Page's trick: scale the logits down so that the first softmax is nearly uniform and the
# large one-cycle learning rates do not blow up the last layer early on.
LOGIT_SCALE = 0.125


class ConvBN(nn.Sequential):
    """conv3x3 (no bias: BN follows) -> [MaxPool2] -> BN -> ReLU."""

    def __init__(self, c_in, c_out, pool=False):
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        super().__init__(*layers, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """x + (conv-BN-ReLU -> conv-BN-ReLU)(x)."""

    def __init__(self, c):
        super().__init__()
        self.res1 = ConvBN(c, c)
        self.res2 = ConvBN(c, c)

    def forward(self, x):
        return x + self.res2(self.res1(x))


def channels(width=1.0):
    """(prep, layer1, layer2, layer3) channels: the exercise's 64-128-256-512 times `width`, at
    least 1."""
    if not (width > 0 and math.isfinite(width)):
        raise ValueError(f"width must be a positive number, got {width}")
    return tuple(max(1, round(c * width)) for c in (64, 128, 256, 512))


class ResNet9(nn.Module):
    """width 1 is the exercise's network; width W multiplies every channel count by W (the "CPU
    twin" is 0.25: the same depth, schedule and data at 1/16 of the compute)."""

    def __init__(self, num_classes=10, width=1.0):
        super().__init__()
        c0, c1, c2, c3 = channels(width)
        self.width = width
        self.prep = ConvBN(3, c0)
        self.layer1 = nn.Sequential(ConvBN(c0, c1, pool=True), Residual(c1))
        self.layer2 = ConvBN(c1, c2, pool=True)
        self.layer3 = nn.Sequential(ConvBN(c2, c3, pool=True), Residual(c3))
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(torch.flatten(self.pool(x), 1)) * LOGIT_SCALE

    @torch.no_grad()
    def predict_proba(self, x):
        """Class probabilities: the one place the softmax is applied outside the loss."""
        return torch.softmax(self(x).float(), dim=1)


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def trace_layers(model, input_shape=(1, 3, 32, 32)):
    """(qualified name, leaf module, output shape) for every leaf layer, in call order, from one
    eval-mode forward pass on zeros."""
    seen, hooks = [], []
    for name, module in model.named_modules():
        if len(list(module.children())) == 0:
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: seen.append((name, m, tuple(o.shape)))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def count_macs(model):
    """Multiply-adds of one forward pass per image: the convolutions and the linear layer (the rest
    is noise)."""
    total = 0
    for _, m, shape in trace_layers(model):
        if isinstance(m, nn.Conv2d):
            taps = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            total += math.prod(shape[1:]) * taps
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
    return total


def layer_table(model):
    """Rows (name, type, output shape, parameters) for every leaf layer."""
    return [(name, type(m).__name__, shape, sum(p.numel() for p in m.parameters(recurse=False)))
            for name, m, shape in trace_layers(model)]


def main(argv=None):
    p = Parser(__doc__)
    config.add_args(p, "width")
    args = p.parse_args(argv)
    check_positive("--width", args.width)
    from tabulate import tabulate

    model = ResNet9(width=args.width)
    rows = [(name, kind, "x".join(map(str, shape)), f"{n:,}")
            for name, kind, shape, n in layer_table(model)]
    print(tabulate(rows, headers=["layer", "type", "output shape", "params"],
                   colalign=("left",) * 3 + ("right",)))
    print(f"Multiply-adds per image (forward): {count_macs(model):,}")
    print(f"Total params: {count_params(model):,}")


if __name__ == "__main__":
    run_cli(main)
