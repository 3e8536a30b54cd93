import pytest
import torch
import torch.nn as nn

import engine
import model
import train
from conftest import run_script


def test_exercise_architecture_and_parameter_count():
    net = model.ResNet9()
    assert model.count_params(net) == 6_573_130
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 128, 128, 256, 512, 512, 512]
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convs)  # BN follows every conv
    rows = model.layer_table(net)
    shapes = {name: shape for name, _, shape, _ in rows}
    assert shapes["prep.2"] == (1, 64, 32, 32)
    assert shapes["layer1.0.3"] == (1, 128, 16, 16) and shapes["layer1.1.res2.2"] == (1, 128, 16, 16)
    assert shapes["layer2.3"] == (1, 256, 8, 8)
    assert shapes["layer3.1.res2.2"] == (1, 512, 4, 4) and shapes["pool"] == (1, 512, 1, 1)
    assert shapes["fc"] == (1, 10)


def test_multiply_adds_per_image():
    # output pixels x output channels x (3x3 x input channels), per conv; then the classifier
    expected = (32 * 32 * 64 * 27 + 32 * 32 * 128 * 576 + 2 * 16 * 16 * 128 * 1152 + 16 * 16 * 256 * 1152
                + 8 * 8 * 512 * 2304 + 2 * 4 * 4 * 512 * 4608 + 512 * 10)
    assert model.count_macs(model.ResNet9()) == expected  # about 379 M


def test_residual_blocks_add_their_input():
    block = model.Residual(8).eval()
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(block(x), x + block.res2(block.res1(x)))


def test_returns_scaled_logits_and_softmax_only_in_predict_proba():
    torch.manual_seed(0)
    net = model.ResNet9().eval()
    x = torch.randn(4, 3, 32, 32)
    logits = net(x)
    features = torch.flatten(net.pool(net.layer3(net.layer2(net.layer1(net.prep(x))))), 1)
    torch.testing.assert_close(logits, net.fc(features) * model.LOGIT_SCALE)
    p = net.predict_proba(x)
    torch.testing.assert_close(p, torch.softmax(logits, 1))
    torch.testing.assert_close(p.sum(1), torch.ones(4))
    assert not torch.allclose(logits.sum(1), torch.ones(4))  # the forward pass itself is not a softmax


@pytest.mark.slow
def test_cli_prints_table_with_total():
    r = run_script("model.py")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "Total params: 6,573,130"
    assert any(line.startswith("layer3.1.res1.0") and "2,359,296" in line for line in lines)


def test_width_multiplies_every_channel_count():
    twin = model.ResNet9(width=0.25)
    assert model.count_params(twin) == 412_954  # 16-32-64-128
    convs = [m for m in twin.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 32, 32, 64, 128, 128, 128] and twin.fc.in_features == 128
    assert model.channels(1) == (64, 128, 256, 512) and model.channels(0.001) == (1, 1, 1, 1)
    assert twin(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_dirac_init_passes_the_input_through_the_first_filters():
    torch.manual_seed(0)
    default = model.ResNet9(width=0.25)
    torch.manual_seed(0)
    dirac = model.ResNet9(width=0.25, init="dirac")
    x = torch.randn(2, 128, 8, 8)  # enough channels for every conv
    for (name, a), (_, b) in zip(default.named_modules(), dirac.named_modules()):
        if isinstance(a, nn.Conv2d):
            k = a.in_channels
            torch.testing.assert_close(b(x[:, :k])[:, :k], x[:, :k], msg=name)  # identity on the first k filters
            torch.testing.assert_close(b.weight[k:], a.weight[k:], msg=name)  # the rest keep their seeded values
            assert not torch.equal(a.weight[:k], b.weight[:k])
    with pytest.raises(ValueError, match="init must be one of"):
        model.ResNet9(init="zeros")


def test_logit_scale_multiplies_the_logits_and_nothing_else():
    torch.manual_seed(0)
    page = model.ResNet9(width=0.25).eval()
    torch.manual_seed(0)
    larger = model.ResNet9(width=0.25, logit_scale=0.25).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(larger(x), 2 * page(x))  # the same weights, twice the logits
    assert model.LOGIT_SCALE == 0.125 and page.logit_scale == model.LOGIT_SCALE  # David Page's, the default
    for bad in (0, -0.125, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="logit_scale must be a positive number"):
            model.ResNet9(logit_scale=bad)


@pytest.mark.slow
def test_cli_width_table_and_bad_width():
    r = run_script("model.py", "--width", "0.25")
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "Total params: 412,954", r.stderr
    r = run_script("model.py", "--width", "0")
    assert r.returncode == 2 and r.stderr.strip() == "model.py: error: --width must be a positive number, got 0.0"


def test_ghost_batch_norm_normalises_each_group_by_its_own_statistics():
    torch.manual_seed(0)
    x = torch.randn(70, 4, 5, 5) * 3 + 1  # groups of 32, 32 and a partial 6
    ghost = model.GhostBatchNorm2d(4, 32)
    with torch.no_grad():
        ghost.weight.uniform_(0.5, 2)
        ghost.bias.uniform_(-1, 1)
    plain = torch.nn.BatchNorm2d(4)
    plain.load_state_dict(ghost.state_dict())  # the same parameters and buffers, so checkpoints load either way
    groups = x.split(32)
    mean = torch.stack([g.mean((0, 2, 3)) for g in groups])
    var = torch.stack([g.var((0, 2, 3), unbiased=False) for g in groups])
    want = torch.cat([(g - m[:, None, None]) / (v[:, None, None] + ghost.eps).sqrt() for g, m, v in zip(groups, mean, var)])
    want = want * ghost.weight[:, None, None] + ghost.bias[:, None, None]
    torch.testing.assert_close(ghost(x), want)
    unbiased = torch.stack([g.var((0, 2, 3)) for g in groups])
    torch.testing.assert_close(ghost.running_mean, 0.1 * mean.mean(0))  # the groups' statistics, averaged
    torch.testing.assert_close(ghost.running_var, 0.9 + 0.1 * unbiased.mean(0))
    ghost.eval(), plain.eval()
    plain.load_state_dict(ghost.state_dict())
    torch.testing.assert_close(ghost(x), plain(x))  # evaluation is plain batch norm
    ghost.train(), plain.train()
    torch.testing.assert_close(ghost(x[:32]), plain(x[:32]))  # one group or less: the whole batch
    engine.recompute_bn_stats(ghost, [(x, None), (x[:64], None)], "cpu")  # momentum None: the plain average
    second = torch.stack([g.mean((0, 2, 3)) for g in x[:64].split(32)]).mean(0)
    torch.testing.assert_close(ghost.running_mean, (mean.mean(0) + second) / 2)


def test_ghost_bn_changes_no_weight_and_reaches_the_network_from_a_run_config():
    torch.manual_seed(0)
    plain = model.ResNet9(width=0.25)
    torch.manual_seed(0)
    ghost = engine.build_model(0, "cpu", **engine.net_args(train.Config(width=0.25, ghost_bn=16)))
    assert sum(isinstance(m, model.GhostBatchNorm2d) and m.group == 16 for m in ghost.modules()) == 8
    assert not any(isinstance(m, model.GhostBatchNorm2d) for m in plain.modules())
    for (k, a), (k2, b) in zip(plain.state_dict().items(), ghost.state_dict().items()):
        assert k == k2 and torch.equal(a, b)  # the same parameters, buffers and initial weights
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="ghost_bn must be an integer >= 0"):
            model.ResNet9(ghost_bn=bad)


def test_frozen_bn_weights_stay_at_one_and_the_optimizer_leaves_them_out():
    net = engine.build_model(0, "cpu", **engine.net_args(train.Config(width=0.25, bn_weight="frozen")))
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 8 and all(not m.weight.requires_grad and m.bias.requires_grad for m in bns)
    opt = engine.make_optimizer(net, 0.5, bn_lr_scale=64.0)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(m.weight) in in_opt for m in bns) and all(id(m.bias) in in_opt for m in bns)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    nn.functional.cross_entropy(net(torch.randn(8, 3, 32, 32)), torch.arange(8)).backward()
    engine.follow_lr(opt)
    opt.step()
    for m in bns:
        assert torch.equal(m.weight, torch.ones_like(m.weight))  # held at 1, decay included
    assert not torch.equal(bns[0].bias, before["prep.1.bias"])  # the biases train
    with pytest.raises(ValueError, match="bn_weight must be one of"):
        model.ResNet9(bn_weight="fixed")
