"""The exercise's ResNet-9 for CIFAR-10 (David Page's "DAWNBench" network), 6,573,130 parameters.

    prep    conv3x3(3->64)    BN ReLU                                  32x32
    layer1  conv3x3(64->128)  MaxPool2 BN ReLU  + R1(conv-BN-ReLU x2)  16x16
    layer2  conv3x3(128->256) MaxPool2 BN ReLU                          8x8
    layer3  conv3x3(256->512) MaxPool2 BN ReLU  + R2(conv-BN-ReLU x2)   4x4
    head    MaxPool4 -> flatten -> Linear(512->10) -> x0.125             logits

Run `python model.py [--width W]` for the per-layer table. The network returns *logits*: the softmax of the exercise lives
inside the cross-entropy loss (log-softmax + NLL, numerically stable); `predict_proba` applies it once for users
who want class probabilities. Never softmax the output and then feed it to CrossEntropyLoss.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cli import BN_WEIGHT, BN_WEIGHTS, INIT, INITS, Parser, add_width_arg, check_common_args, run_cli

# Page's trick: scale the logits down so that the initial softmax is nearly uniform and the large one-cycle
# learning rates do not blow up the last layer early on.
LOGIT_SCALE = 0.125


class GhostBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training-time statistics come from groups of `group` images of the batch instead of the
    whole batch (Hoffer et al.'s ghost batch norm, in David Page's bag of tricks: noisier statistics regularise).
    The same parameters and buffers as nn.BatchNorm2d; the running averages take the mean of the groups' mean and
    variance, what each group was normalised with; evaluation is plain batch norm."""

    def __init__(self, c, group):
        super().__init__(c)
        self.group = group

    def forward(self, x):
        if not self.training or x.shape[0] <= self.group:
            return super().forward(x)
        out, stats = [], []
        for chunk in x.split(self.group):  # the partial last batch ends in a smaller group
            mean_var = self.running_mean.new_zeros(2, self.num_features)  # momentum 1 below: the group's own stats
            out.append(F.batch_norm(chunk, mean_var[0], mean_var[1], self.weight, self.bias, True, 1.0, self.eps))
            stats.append(mean_var)
        with torch.no_grad():
            mean, var = torch.stack(stats).mean(0)
            self.num_batches_tracked.add_(1)
            # momentum None (engine.recompute_bn_stats): a cumulative average, as nn.BatchNorm2d keeps then
            weight = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.item()
            self.running_mean.lerp_(mean, weight)
            self.running_var.lerp_(var, weight)
        return torch.cat(out)


def batch_norm(c, ghost_bn=0):
    return GhostBatchNorm2d(c, ghost_bn) if ghost_bn else nn.BatchNorm2d(c)


class ConvBN(nn.Sequential):
    """conv3x3 (no bias: BN follows) -> [MaxPool2] -> BN -> ReLU."""

    def __init__(self, c_in, c_out, pool=False, ghost_bn=0):
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        layers += [batch_norm(c_out, ghost_bn), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class Residual(nn.Module):
    """x + (conv-BN-ReLU -> conv-BN-ReLU)(x)."""

    def __init__(self, c, ghost_bn=0):
        super().__init__()
        self.res1 = ConvBN(c, c, ghost_bn=ghost_bn)
        self.res2 = ConvBN(c, c, ghost_bn=ghost_bn)

    def forward(self, x):
        return x + self.res2(self.res1(x))


def channels(width=1.0):
    """(prep, layer1, layer2, layer3) channel counts: the exercise's 64-128-256-512 times `width`, at least 1."""
    if not (width > 0 and math.isfinite(width)):
        raise ValueError(f"width must be a positive number, got {width}")
    return tuple(max(1, round(c * width)) for c in (64, 128, 256, 512))


class ResNet9(nn.Module):
    """width 1 is the exercise's network; width W multiplies every channel count by W (the "CPU twin" is 0.25:
    the same depth, schedule and data at 1/16 of the compute). ghost_bn N > 0: every batch norm takes its
    training statistics from groups of N images (GhostBatchNorm2d); 0, the whole batch. bn_weight "frozen": the
    batch-norm weights stay at 1 and only their biases train."""

    def __init__(self, num_classes=10, logit_scale=LOGIT_SCALE, width=1.0, init=INIT, ghost_bn=0, bn_weight=BN_WEIGHT):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if bn_weight not in BN_WEIGHTS:
            raise ValueError(f"bn_weight must be one of {BN_WEIGHTS}, got {bn_weight!r}")
        if not (logit_scale > 0 and math.isfinite(logit_scale)):
            raise ValueError(f"logit_scale must be a positive number, got {logit_scale}")
        if not (isinstance(ghost_bn, int) and ghost_bn >= 0):
            raise ValueError(f"ghost_bn must be an integer >= 0, got {ghost_bn!r}")
        c0, c1, c2, c3 = channels(width)
        self.width = width
        g = ghost_bn
        self.prep = ConvBN(3, c0, ghost_bn=g)
        self.layer1 = nn.Sequential(ConvBN(c0, c1, pool=True, ghost_bn=g), Residual(c1, g))
        self.layer2 = ConvBN(c1, c2, pool=True, ghost_bn=g)
        self.layer3 = nn.Sequential(ConvBN(c2, c3, pool=True, ghost_bn=g), Residual(c3, g))
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(c3, num_classes)
        self.logit_scale = logit_scale
        if init == "dirac":
            dirac_init(self)
        if bn_weight == "frozen":  # held at their initial 1: no gradient, and make_optimizer leaves them out
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad_(False)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(torch.flatten(self.pool(x), 1)) * self.logit_scale

    @torch.no_grad()
    def predict_proba(self, x):
        """Class probabilities: the one place the softmax is applied outside the loss."""
        return torch.softmax(self(x).float(), dim=1)


@torch.no_grad()
def dirac_init(model):
    """airbench's identity init: in every conv3x3 of c_in -> c_out channels (c_out >= c_in here), the first c_in
    filters copy their input channel (the centre tap 1, the rest 0); the other filters keep their Kaiming values.
    The network starts close to passing its input through, which airbench found trains to a given accuracy in
    fewer epochs."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.dirac_(m.weight[:m.in_channels])


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def trace_layers(model, input_shape=(1, 3, 32, 32)):
    """(qualified name, leaf module, output shape) for every leaf layer, in call order, from one eval-mode forward
    pass on zeros."""
    seen, hooks = [], []
    for name, module in model.named_modules():
        if len(list(module.children())) == 0:
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: seen.append((name, m, tuple(o.shape)))))
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
    """Multiply-adds of one forward pass per image, from the convolutions and the linear layer (the rest is noise)."""
    total = 0
    for _, m, shape in trace_layers(model):
        if isinstance(m, nn.Conv2d):
            total += math.prod(shape[1:]) * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
    return total


def layer_table(model):
    """Rows (name, type, output shape, parameters) for every leaf layer."""
    return [(name, type(m).__name__, shape, sum(p.numel() for p in m.parameters(recurse=False)))
            for name, m, shape in trace_layers(model)]


def main(argv=None):
    p = Parser(__doc__)
    add_width_arg(p)
    args = p.parse_args(argv)
    check_common_args(args)
    from tabulate import tabulate

    model = ResNet9(width=args.width)
    rows = [(name, kind, "x".join(map(str, shape)), f"{n:,}") for name, kind, shape, n in layer_table(model)]
    print(tabulate(rows, headers=["layer", "type", "output shape", "params"], colalign=("left",) * 3 + ("right",)))
    print(f"Multiply-adds per image (forward): {count_macs(model):,}")
    print(f"Total params: {count_params(model):,}")


if __name__ == "__main__":
    run_cli(main)
