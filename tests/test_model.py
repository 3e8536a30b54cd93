import pytest
import torch
import torch.nn as nn

import model
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
    assert shapes["layer1.0.3"] == shapes["layer1.1.res2.2"] == (1, 128, 16, 16)
    assert shapes["layer2.3"] == (1, 256, 8, 8)
    assert shapes["layer3.1.res2.2"] == (1, 512, 4, 4) and shapes["pool"] == (1, 512, 1, 1)
    assert shapes["fc"] == (1, 10)


def test_multiply_adds_per_image():
    # output pixels x output channels x (3x3 x input channels), per conv; then the classifier
    expected = (32 * 32 * 64 * 27 + 32 * 32 * 128 * 576 + 2 * 16 * 16 * 128 * 1152
                + 16 * 16 * 256 * 1152 + 8 * 8 * 512 * 2304 + 2 * 4 * 4 * 512 * 4608 + 512 * 10)
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
    # the forward pass itself is not a softmax
    assert not torch.allclose(logits.sum(1), torch.ones(4))


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
    assert [c.out_channels for c in convs] == [16, 32, 32, 32, 64, 128, 128, 128]
    assert twin.fc.in_features == 128
    assert model.channels(1) == (64, 128, 256, 512) and model.channels(0.001) == (1, 1, 1, 1)
    assert twin(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_cli_width_table_and_bad_width():
    r = run_script("model.py", "--width", "0.25")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "Total params: 412,954"
    r = run_script("model.py", "--width", "0")
    assert r.returncode == 2
    assert r.stderr.strip() == "model.py: error: --width must be a positive number, got 0.0"
