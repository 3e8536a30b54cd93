from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

import data
from config import Config
from conftest import DATA, run_script


@pytest.fixture(scope="module")
def arrays():
    return data.load_cifar10(DATA, download=False)


def test_slice_is_real_cifar10(arrays):
    tx, ty, sx, sy = arrays
    assert tx.shape == (400, 32, 32, 3) and tx.dtype == np.uint8 and sx.shape == (200, 32, 32, 3)
    # the published first labels of the real CIFAR-10 files
    assert ty[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert sy[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_channel_stats_match_numpy(arrays):
    mean, std = data.channel_stats(arrays[0])
    x = arrays[0].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std.numpy(), x.std(0), rtol=1e-12)


def reference_augment(img_hwc, d, mean, std):
    """One image, the plain way: torchvision pad+crop and flip, normalise, then a cutout square set
    to 0."""
    x = torch.as_tensor(img_hwc).permute(2, 0, 1)  # CHW uint8
    x = TF.crop(TF.pad(x, [data.PAD], fill=0), int(d["dy"]), int(d["dx"]), data.CROP, data.CROP)
    if d["flip"]:
        x = TF.hflip(x)
    x = TF.normalize(x.float(), mean.float().tolist(), std.float().tolist())
    cy, cx, h = int(d["cy"]), int(d["cx"]), data.CUTOUT // 2
    x[:, max(cy - h, 0):min(cy + h, 32), max(cx - h, 0):min(cx + h, 32)] = 0
    return x


def test_batched_augmentation_equals_per_image_reference(arrays):
    images = torch.as_tensor(arrays[0][:64])
    mean, std = data.channel_stats(arrays[0])
    draws = data.draw_augmentation(64, torch.Generator().manual_seed(1))
    # force the border cases of crop, flip and cutout into the batch
    draws["dy"][:4] = torch.tensor([0, 8, 0, 8])
    draws["dx"][:4] = torch.tensor([0, 8, 8, 0])
    draws["cy"][:4] = torch.tensor([0, 31, 3, 28])
    draws["cx"][:4] = torch.tensor([31, 0, 4, 16])
    draws["flip"][:2] = torch.tensor([True, False])
    padded = torch.nn.functional.pad(images, (0, 0, 4, 4, 4, 4))
    batched = data.augment(padded, draws, mean, std)
    for i in range(64):
        ref = reference_augment(images[i], {k: v[i] for k, v in draws.items()}, mean, std)
        torch.testing.assert_close(batched[i], ref, rtol=1e-6, atol=1e-5)


def test_augmentation_laws():
    n = 90_000
    d = data.draw_augmentation(n, torch.Generator().manual_seed(0))
    for key in ("dy", "dx"):
        counts = torch.bincount(d[key], minlength=9)
        assert len(counts) == 9  # offsets 0..8 only
        expected = n / 9
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 26.1, (key, counts)  # 99.9 % quantile of chi-square with 8 dof
    assert abs(d["flip"].float().mean().item() - 0.5) < 0.01
    assert d["cy"].min() == 0 and d["cy"].max() == 31


def test_exactly_one_cut_square_per_image(arrays):
    images = torch.as_tensor(arrays[0][:200])
    mean, std = data.channel_stats(arrays[0])
    draws = data.draw_augmentation(200, torch.Generator().manual_seed(3))
    x = data.augment(torch.nn.functional.pad(images, (0, 0, 4, 4, 4, 4)), draws, mean, std)
    for i in range(200):
        # a normalised pixel is never exactly 0 by chance: the mean is not an integer
        zero = (x[i] == 0).all(0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert zero.sum() == len(rows) * len(cols), "the cut region is one rectangle"
        cy, cx = int(draws["cy"][i]), int(draws["cx"][i])
        assert rows.tolist() == list(range(max(cy - 4, 0), min(cy + 4, 32)))
        assert cols.tolist() == list(range(max(cx - 4, 0), min(cx + 4, 32)))


def synthetic_loader(n, bs, seed=0, **kwargs):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)
    ids = torch.arange(n)  # labels carry the image index so we can see which images came
    return data.Loader(images, ids, bs, data.channel_stats(images), "cpu", train=True, seed=seed,
                       **kwargs)


def test_train_loader_epochs_cover_all_reshuffle_and_reproduce():
    loader = synthetic_loader(1000, 512, seed=5)
    assert len(loader) == 2
    epochs = [[y for _, y in loader] for _ in range(2)]
    for batches in epochs:
        assert [len(b) for b in batches] == [512, 488]  # last batch partial, not dropped
        assert sorted(torch.cat(batches).tolist()) == list(range(1000))
    assert not torch.equal(torch.cat(epochs[0]), torch.cat(epochs[1])), "reshuffled each epoch"
    again = synthetic_loader(1000, 512, seed=5)
    x0 = [x for x, _ in loader][0]  # epoch 3 of the first loader
    again.epoch = 2  # resuming at epoch 3 reproduces it exactly
    assert torch.equal(x0, next(iter(again))[0])
    other = synthetic_loader(1000, 512, seed=6)
    assert not torch.equal(torch.cat([y for _, y in other]), torch.cat(epochs[0]))


def test_full_size_iteration_count():
    images = torch.zeros(50_000, 32, 32, 3, dtype=torch.uint8)
    loader = data.Loader(images, torch.zeros(50_000, dtype=torch.long), 512,
                         (torch.zeros(3), torch.ones(3)), "cpu", True)
    assert len(loader) == 98


def test_eval_loader_is_plain_and_in_order(arrays):
    train, evaluation = data.make_loaders(arrays, Config(bs=64, eval_bs=128), "cpu")
    xs, ys = zip(*evaluation)
    assert [len(y) for y in ys] == [128, 72] and evaluation.name == "test"
    assert torch.equal(torch.cat(ys), torch.as_tensor(arrays[3]))
    expected = (torch.as_tensor(arrays[2]).float() - train.mean.float()) / train.std.float()
    torch.testing.assert_close(torch.cat(xs), expected.permute(0, 3, 1, 2))


def test_validation_split_never_touches_test(arrays):
    _, evaluation = data.make_loaders(arrays, Config(bs=64, val=100), "cpu")
    assert evaluation.name == "val" and evaluation.n == 100
    assert torch.equal(evaluation.labels, torch.as_tensor(arrays[1][-100:]))


def write_npz(folder, images, labels, split="train"):
    folder.mkdir(exist_ok=True)
    np.savez(folder / f"cifar10_{split}.npz", images=images, labels=labels)


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((4, 32, 32), np.uint8), np.zeros(4, np.uint8), "uint8 Nx32x32x3"),
    (np.zeros((4, 32, 32, 3), np.float32), np.zeros(4, np.uint8), "uint8 Nx32x32x3"),
    (np.zeros((4, 32, 32, 3), np.uint8), np.full(4, 10, np.uint8), "0..9"),
    (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(3, np.uint8), "4 entries"),
])
def test_bad_arrays_are_named(tmp_path, images, labels, message):
    write_npz(tmp_path, images, labels)
    with pytest.raises(data.UserError, match=message) as e:
        data.load_cifar10(tmp_path, download=False)
    assert "cifar10_train.npz" in str(e.value) and "\n" not in str(e.value)


def test_failed_download_leaves_no_folder(tmp_path, monkeypatch):
    import torchvision

    def offline(root, **kwargs):
        Path(root).mkdir(parents=True, exist_ok=True)  # as torchvision does before it downloads
        # what an interrupted download leaves
        Path(root, "cifar-10-python.tar.gz").write_bytes(b"partial")
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(data.UserError, match="download failed: OSError"):
        data.load_cifar10(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made stays
    with pytest.raises(data.UserError):
        data.load_cifar10(tmp_path / "mine")
    assert (tmp_path / "mine").is_dir()


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(data.UserError, match="no CIFAR-10 in"):
        data.load_cifar10(tmp_path / "nowhere", download=False)
    raw = (DATA / "cifar10_train.npz").read_bytes()
    (tmp_path / "cifar10_train.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(data.UserError, match="cifar10_train.npz: corrupt or truncated"):
        data.load_cifar10(tmp_path, download=False)
    (tmp_path / "cifar10_train.npz").write_bytes(raw)
    # the other half of the pair
    with pytest.raises(data.UserError, match="cifar10_test.npz: missing"):
        data.load_cifar10(tmp_path, download=False)


def test_torchvision_batches_folder(tmp_path, arrays):
    import pickle
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    chunks = np.array_split(np.arange(400), 5)
    for i, idx in enumerate(chunks, 1):
        d = {"data": arrays[0][idx].transpose(0, 3, 1, 2).reshape(len(idx), -1),
             "labels": arrays[1][idx].tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(d))
    d = {"data": arrays[2].transpose(0, 3, 1, 2).reshape(200, -1), "labels": arrays[3].tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(d))
    got = data.load_cifar10(tmp_path, download=False)
    for a, b in zip(got, arrays):
        np.testing.assert_array_equal(a, b)
    for name, protocol in (("data_batch_2", 2), ("data_batch_4", 5)):  # the protocols numpy writes
        batch = pickle.loads((folder / name).read_bytes())
        (folder / name).write_bytes(pickle.dumps(batch, protocol))
    for a, b in zip(data.load_cifar10(tmp_path, download=False), arrays):
        np.testing.assert_array_equal(a, b)
    (folder / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(data.UserError, match="data_batch_3: corrupt"):
        data.load_cifar10(tmp_path, download=False)
    # a pickle that runs code
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": Path.touch, "labels": []}))
    with pytest.raises(data.UserError, match="refused to load pathlib.Path"):
        data.load_cifar10(tmp_path, download=False)


@pytest.mark.slow
def test_cli_writes_grid_and_fails_in_one_line(tmp_path):
    out = tmp_path / "aug.png"
    r = run_script("data.py", "--data", DATA, "--out", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad"
    write_npz(bad, np.zeros((4, 32, 32, 3), np.uint8), np.full(4, 12, np.uint8))
    r = run_script("data.py", "--data", bad, "--out", tmp_path / "x.png", "--device", "cpu")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "cifar10_train.npz" in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_zero_padding():
    x = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    padded = data.pad(x)
    assert padded.shape == (3, 40, 40, 3) and torch.equal(padded[:, 4:36, 4:36], x)
    assert padded[:, :4].eq(0).all() and padded[:, :, 36:].eq(0).all()
