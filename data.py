"""CIFAR-10 that lives on the training device, with the exercise's augmentation done there in
batched passes.

    python data.py --data DIR --out aug.png      # a grid of augmented images with class names

Loading: DIR holds `cifar10_train.npz` + `cifar10_test.npz` (arrays `images` uint8 Nx32x32x3,
`labels`), or torchvision's `cifar-10-batches-py`; with neither, torchvision's download is tried
once. Augmentation (training only), per image, in one pass over a batch on the device:
RandomCrop(32) of the image zero-padded by 4 -> horizontal flip (p=0.5) -> Cutout 8x8 (centre
uniform over the image, clipped at the border; filled with the channel mean = 0 after normalisation)
-> normalise with the training set's mean/std. The random draws come from a CPU generator seeded by
(seed, epoch), so a run is reproducible and resumable, and the CPU and GPU see the same
augmentations. Epochs: every training image once per epoch in a fresh order; the last batch is
partial (50,000 / 512 -> 98 iterations, the 98th has 336 images) rather than dropped, so no image is
skipped.
"""
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import config
from cli import Parser, UserError, pick_device, run_cli
from files import check_figure_path, save_figure

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PAD, CROP, CUTOUT = 4, 32, 8  # pixels


# --- loading


def _check_split(path, images, labels):
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise UserError(f"{path}: images must be uint8 Nx32x32x3, got {images.dtype} "
                        f"{images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserError(f"{path}: labels must be a vector of {len(images)} entries, got shape "
                        f"{labels.shape}")
    integers = np.issubdtype(labels.dtype, np.integer) and len(labels) > 0
    if not integers or labels.min() < 0 or labels.max() > 9:
        raise UserError(f"{path}: labels must be integers in 0..9")
    return images, labels.astype(np.int64)


def _load_npz(path):
    try:
        with np.load(path) as z:
            if "images" not in z.files or "labels" not in z.files:
                raise UserError(f"{path}: needs arrays 'images' and 'labels', found "
                                f"{sorted(z.files)}")
            images, labels = z["images"], z["labels"]
    except UserError:
        raise
    except (PermissionError, IsADirectoryError) as e:
        raise UserError(f"{path}: cannot be read ({e.strerror})") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"{path}: corrupt or truncated npz ({type(e).__name__}: {e})") from None
    return _check_split(path, images, labels)


class _ArraysOnly(pickle.Unpickler):
    """torchvision's CIFAR-10 batches are pickles, and a pickle can run any code: this one rebuilds
    numpy arrays and plain containers and refuses every other global, so a batch file from elsewhere
    cannot run code."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR-10 batch holds "
                                         "only arrays")
        return super().find_class(module, name)


def _load_batches(folder, names):
    images, labels = [], []
    for name in names:
        path = folder / name
        try:
            with open(path, "rb") as f:
                d = _ArraysOnly(f, encoding="latin1").load()
            chw = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            images.append(chw.transpose(0, 2, 3, 1))
            labels.append(np.asarray(d["labels"]))
        except FileNotFoundError:
            raise UserError(f"{path}: missing from torchvision's cifar-10-batches-py") from None
        except Exception as e:  # pickle raises many types on a damaged file
            raise UserError(f"{path}: corrupt or truncated batch file ({type(e).__name__}: "
                            f"{e})") from None
    return _check_split(folder, np.concatenate(images), np.concatenate(labels))


def load_cifar10(data_dir, download=True):
    """Returns (train_images, train_labels, test_images, test_labels): uint8 NHWC arrays and int64
    labels."""
    root = Path(data_dir)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: is a file; --data names the folder that holds CIFAR-10")
    pair = [root / "cifar10_train.npz", root / "cifar10_test.npz"]
    if any(p.exists() for p in pair):
        splits = []
        for p, other in (pair, pair[::-1]):
            if not p.exists():
                raise UserError(f"{p}: missing ({other.name} is there; the two files come as a "
                                "pair)")
            splits += _load_npz(p)
        return tuple(splits)
    batches = root if root.name == "cifar-10-batches-py" else root / "cifar-10-batches-py"
    if not batches.is_dir() and download:
        existed = root.exists()
        try:
            import torchvision

            torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        except Exception as e:
            if not existed:  # a failed download leaves no folder of its own behind
                shutil.rmtree(root, ignore_errors=True)
            first = str(e).splitlines()[0] if str(e) else ""
            reason = f"download failed: {type(e).__name__}: {first}"
            raise UserError(f"no CIFAR-10 in {root} and {reason}; put cifar10_train.npz + "
                            "cifar10_test.npz or torchvision's cifar-10-batches-py there "
                            "(README.md, 'The data')") from None
    if not batches.is_dir():
        raise UserError(f"no CIFAR-10 in {root}: put cifar10_train.npz + cifar10_test.npz or "
                        "cifar-10-batches-py there")
    return (*_load_batches(batches, [f"data_batch_{i}" for i in range(1, 6)]),
            *_load_batches(batches, ["test_batch"]))


# --- augmentation


def channel_stats(images):
    """Per-channel mean and std of uint8 NHWC images, in pixel units (0..255): exact, from 256-bin
    histograms, computed wherever `images` lives (milliseconds on a GPU)."""
    x = torch.as_tensor(images)
    v = torch.arange(256, dtype=torch.float64, device=x.device)
    hist = torch.stack([torch.bincount(x[..., c].reshape(-1), minlength=256) for c in range(3)])
    hist = hist.double()
    mean = (hist * v).sum(1) / hist.sum(1)
    std = ((hist * (v - mean[:, None]) ** 2).sum(1) / hist.sum(1)).sqrt()
    return mean, std


def draw_augmentation(n, generator):
    """The random draws for n images: crop offsets in 0..2*PAD, flip flags, cutout centres in
    0..CROP-1 (the square is cut off at the image's border: 56.25 pixels on average, as in DeVries
    and Taylor's Cutout)."""
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    centre = torch.randint(0, CROP, (n, 2), generator=generator)
    return {"dy": offsets[:, 0], "dx": offsets[:, 1], "flip": flip,
            "cy": centre[:, 0], "cx": centre[:, 1]}


def normalise(x_u8_nhwc, mean, std):
    """uint8 NHWC -> float NCHW (channels-last in memory, the fast layout for convolutions)."""
    return ((x_u8_nhwc.float() - mean.float()) / std.float()).permute(0, 3, 1, 2)


def augment(padded, draws, mean, std):
    """Crop -> flip -> normalise -> cutout for a batch of zero-padded uint8 NHWC images (B x 40 x 40
    x 3). The crop and the flip are one gather with per-image row/column indices; cutout is a mask
    multiply. Cutout after normalisation with 0 is the same as filling with the channel mean before
    it."""
    dev = padded.device
    dy, dx, flip, cy, cx = (draws[k].to(dev, non_blocking=True)
                            for k in ("dy", "dx", "flip", "cy", "cx"))
    r = torch.arange(CROP, device=dev)
    rows = dy[:, None] + r  # B x 32
    # a flip reads the columns backwards
    cols = dx[:, None] + torch.where(flip[:, None], CROP - 1 - r, r)
    b = torch.arange(len(padded), device=dev)[:, None, None]
    x = normalise(padded[b, rows[:, :, None], cols[:, None, :]], mean, std)
    h = CUTOUT // 2
    keep_r = ((r >= cy[:, None] - h) & (r < cy[:, None] + h)).logical_not()
    keep_c = ((r >= cx[:, None] - h) & (r < cx[:, None] + h)).logical_not()
    keep = keep_r[:, :, None] | keep_c[:, None, :]  # B x 32 x 32: False inside the square
    return x * keep[:, None].to(x.dtype)


def pad(x):
    """uint8 NHWC images zero-padded by PAD on each side for the random crop (torchvision's default
    fill)."""
    return F.pad(x, (0, 0, PAD, PAD, PAD, PAD))


def shard(n, rank, world):
    """(start, stop) of process `rank`'s part of n consecutive items: parts differ by at most one
    item."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class Loader:
    """Batches of a device-resident uint8 split: augmented and reshuffled per epoch if train, else
    plain and in order.

    `epoch` counts the passes made so far; it seeds the pass's shuffle and draws, so setting it
    resumes exactly. With `world` processes (torchrun), process `rank` holds the whole training set,
    draws the same order and augmentation as every other process and takes its slice of each global
    batch, so the union of the slices is the one-process batch; of the evaluation set it holds only
    its own consecutive part.
    """

    def __init__(self, images, labels, batch_size, stats, device, train, seed=0, rank=0, world=1):
        self.device, self.train, self.seed, self.epoch = torch.device(device), train, seed, 0
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.mean, self.std = (t.to(self.device) for t in stats)
        x, y = torch.as_tensor(images).to(self.device), torch.as_tensor(labels).to(self.device)
        if not train:
            parts = [shard(len(y), r, world) for r in range(world)]
            # evaluation rows each process holds, to gather predictions
            self.sizes = [b - a for a, b in parts]
            a, b = parts[rank]
            x, y = x[a:b], y[a:b]
        self.labels, self.n = y, len(y)
        # training keeps uint8, padded once (small, cheap to gather); evaluation keeps the
        # normalised floats
        self.x = pad(x) if train else normalise(x, self.mean, self.std)

    def __len__(self):
        return -(-self.n // self.batch_size)

    def __iter__(self):
        if not self.train:
            for i in range(0, self.n, self.batch_size):
                yield self.x[i:i + self.batch_size], self.labels[i:i + self.batch_size]
            return
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        draws = draw_augmentation(self.n, g)
        self.epoch += 1
        order = order.to(self.device, non_blocking=True)
        draws = {k: v.to(self.device, non_blocking=True) for k, v in draws.items()}
        for i in range(0, self.n, self.batch_size):
            # this process's part
            a, b = shard(min(self.batch_size, self.n - i), self.rank, self.world)
            idx = order[i + a:i + b]
            sel = {k: v[i + a:i + b] for k, v in draws.items()}
            yield augment(self.x[idx], sel, self.mean, self.std), self.labels[idx]


def split_data(arrays, subset=0, val=0):
    """(train_x, train_y, eval_x, eval_y, eval_name): the first `subset` images of each split if
    subset > 0; with val > 0 the last `val` training images become the evaluation set and the test
    set is not used at all."""
    tx, ty, sx, sy = arrays
    name = "test"
    if val:
        if val >= len(tx):
            raise UserError(f"--val {val} leaves no training images (only {len(tx)})")
        tx, ty, sx, sy, name = tx[:-val], ty[:-val], tx[-val:], ty[-val:], "val"
    if subset:
        tx, ty, sx, sy = tx[:subset], ty[:subset], sx[:subset], sy[:subset]
    return tx, ty, sx, sy, name


def make_loaders(arrays, cfg, device, rank=0, world=1):
    """Train and evaluation loaders on `device` for the settings `cfg` (bs, seed, subset, val,
    eval_bs). Mean/std come from all loaded training images (never the test set). cfg.bs is the
    global batch; with `world` processes this one yields its slice (see Loader)."""
    # one upload; all slicing on the device
    arrays = [torch.as_tensor(a).to(device) for a in arrays]
    stats = channel_stats(arrays[0][:-cfg.val] if cfg.val else arrays[0])
    tx, ty, sx, sy, name = split_data(arrays, cfg.subset, cfg.val)
    if 0 < len(tx) % cfg.bs < world or len(sx) < world:
        raise UserError(f"{len(tx)} training images in batches of {cfg.bs} leave a last batch, or "
                        f"{len(sx)} evaluation images leave a part, too small for {world} "
                        "processes: "
                        "change --subset or --bs")
    train = Loader(tx, ty, cfg.bs, stats, device, train=True, seed=cfg.seed, rank=rank, world=world)
    evaluation = Loader(sx, sy, cfg.eval_bs, stats, device, train=False, rank=rank, world=world)
    evaluation.name = name
    return train, evaluation


def main(argv=None):
    p = Parser(__doc__)
    config.add_args(p, config.COMMON,
                    out=("aug.png", "PNG file for the grid of augmented images", "FILE"))
    p.add_argument("--rows", type=int, default=4,
                   help="rows (and twice as many columns) in the grid (default: 4)")
    args = p.parse_args(argv)
    if args.rows <= 0:
        raise UserError(f"--rows must be positive, got {args.rows}")
    cfg = config.from_args(args, bs=2 * args.rows ** 2, device=pick_device(args.device, False))
    check_figure_path(cfg.out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, _ = make_loaders(load_cifar10(cfg.data), cfg, cfg.device)
    x, y = next(iter(train))
    pix = (x.permute(0, 2, 3, 1) * train.std.float() + train.mean.float()).clamp(0, 255)
    pix = pix.byte().cpu().numpy()
    rows = args.rows
    fig, axes = plt.subplots(rows, 2 * rows, figsize=(2 * rows * 1.6, rows * 1.8))
    for ax, img, label in zip(axes.flat, pix, y.tolist()):
        ax.imshow(img)
        ax.set_title(CLASSES[label], fontsize=9)
        ax.axis("off")
    fig.suptitle("What the network sees: crop (pad 4) -> flip -> cutout 8x8 (grey = channel mean)")
    save_figure(fig, cfg.out)
    print(f"wrote {cfg.out} ({len(pix)} augmented training images, seed {cfg.seed})")


if __name__ == "__main__":
    run_cli(main)
