"""COCO batches decoded in the main process (imbalance_bench/data/jpeg_batch.py), on the CPU, against
the workers' CPU path on the real-format fixture."""

import copy
import logging
import os

import pytest
import torch

from coco_files import file_name, image_id, write_coco
from test_coco import coco_kwargs
from imbalance_bench.data.coco import build_coco
from imbalance_bench.data.images import make_loader
from imbalance_bench.data.jpeg_batch import EncodedBatch, batch_to_device
from imbalance_bench.errors import DataError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_coco(**coco_kwargs(write_coco(tmp_path_factory.mktemp("coco"), num_train=24, num_val=10)))


def encoded_copy(split):
    """The same split switched to main-process decoding (the module's bundle stays as it is)."""
    clone = copy.copy(split)
    clone.decode_on(CPU)
    return clone


def cpu_and_encoded(split, positions, seed=0):
    """(images, targets) of the workers' CPU path and (EncodedBatch, targets), each from `seed`."""
    torch.manual_seed(seed)
    expected = split[positions]
    torch.manual_seed(seed)
    return expected, encoded_copy(split)[positions]


@pytest.mark.parametrize("which", ["train", "test"])
def test_decoded_batch_equals_the_cpu_path(bundle, which):
    split = getattr(bundle, which)
    positions = list(range(len(split)))
    (images, targets), (batch, batch_targets) = cpu_and_encoded(split, positions)
    assert isinstance(batch, EncodedBatch) and len(batch) == len(positions)
    decoded = batch.to("cpu")
    assert decoded.dtype == torch.uint8 and decoded.shape == (len(positions), 3, 32, 32)
    assert torch.equal(decoded, images)  # same decoder and resize on the CPU: exact
    assert batch.kept == positions and torch.equal(batch_targets, targets)
    if which == "train":  # the boxes were random crops, not whole images
        assert len(set(batch.boxes)) == len(positions) and (0, 0, 40, 56) not in batch.boxes
    else:
        assert batch.boxes == [None] * len(positions)


def test_grayscale_jpegs_become_three_equal_channels(bundle):
    row = bundle.subset_indices["test"].index(image_id("val", 1))  # saved as 8-bit grayscale
    (images, _), (batch, _) = cpu_and_encoded(bundle.test, [row])
    image = batch.to(CPU)[0]
    assert image.shape == (3, 32, 32) and torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert torch.equal(image, images[0])


def test_pinning_leaves_the_batch_alone(bundle):
    batch, _ = encoded_copy(bundle.test)[[0, 1]]
    assert batch.pin_memory() is batch


def break_huffman_table(path):
    """Overwrite the counts of the file's first Huffman table: its header still reads and it still
    ends in the EOI marker, so only decoding it finds the fault."""
    raw = bytearray(path.read_bytes())
    start = raw.find(b"\xff\xc4") + 5  # marker, length (2), table class/id
    raw[start : start + 16] = b"\xff" * 16
    path.write_bytes(bytes(raw))


@pytest.fixture
def damaged(tmp_path):
    """A fixture whose val image 2 has a bogus Huffman table and val image 3 is cut short; both
    pass the load-time header check. Returns (bundle with bad_images=skip, {name: (row, path)})."""
    root = write_coco(tmp_path, num_train=4, num_val=6)
    huffman, cut = root / "val2017" / file_name("val", 2), root / "val2017" / file_name("val", 3)
    break_huffman_table(huffman)
    cut.write_bytes(cut.read_bytes()[:-64])
    data = build_coco(**coco_kwargs(root, bad_images="skip"))
    rows = {name: (data.subset_indices["test"].index(image_id("val", p)), str(path.resolve()))
            for name, p, path in (("huffman", 2, huffman), ("cut", 3, cut))}
    return data, rows


def cpu_error(split, positions) -> str:
    split.skip_unreadable = False
    with pytest.raises(DataError) as error:
        split[positions]
    return str(error.value)


def test_corrupt_body_raises_the_cpu_paths_error_when_decoding(damaged):
    data, rows = damaged
    row, path = rows["huffman"]
    expected = cpu_error(data.test, [row])
    assert expected == f"{path}: unreadable image (Bogus Huffman table definition)"
    batch, _ = encoded_copy(data.test)[[row - 1, row]]
    with pytest.raises(DataError) as error:
        batch.to(CPU)
    assert str(error.value) == expected


def test_cut_jpeg_raises_the_cpu_paths_error_in_the_worker(damaged):
    data, rows = damaged
    row, path = rows["cut"]
    expected = cpu_error(data.test, [row])
    assert expected.startswith(f"{path}: unreadable image (") and "\n" not in expected
    with pytest.raises(DataError) as error:
        encoded_copy(data.test)[[row]]  # nvJPEG would decode it without a word, so the worker checks
    assert str(error.value) == expected


def test_corrupt_files_are_skipped_with_their_targets(damaged, caplog):
    data, rows = damaged
    positions = list(range(len(data.test)))
    images, targets = data.test[positions]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        batch, batch_targets = encoded_copy(data.test)[positions]
        assert len(batch) == len(batch_targets) == len(positions) - 1  # the cut file, in the worker
        decoded, kept_targets = batch_to_device(batch, batch_targets, CPU)
    warnings = sorted(record.getMessage() for record in caplog.records)
    assert [message.split(": unreadable image (")[0] for message in warnings] == sorted(p for _, p in rows.values())
    assert all(message.endswith("; skipped (dataset.bad_images=skip)") for message in warnings)
    assert len(decoded) == len(positions) - 2 and torch.equal(decoded, images)
    bad = {row for row, _ in rows.values()}
    assert torch.equal(kept_targets, targets)
    assert torch.equal(kept_targets, data.test.targets[[p for p in positions if p not in bad]])
    empty, no_targets = batch_to_device(*encoded_copy(data.test)[sorted(bad)], CPU)
    assert empty.shape == (0, 3, 32, 32) and no_targets.shape == (0, data.num_classes)


def test_missing_file_is_found_in_the_worker(damaged):
    data, _ = damaged
    gone = data.test.paths[0]
    os.remove(gone)
    batch, targets = encoded_copy(data.test)[[0, 1]]
    assert batch.paths == [data.test.paths[1]] and torch.equal(targets, data.test.targets[[1]])
    expected = cpu_error(data.test, [0, 1])
    assert expected.startswith(f"{gone}: unreadable image ([Errno 2] No such file")
    with pytest.raises(DataError) as error:
        encoded_copy(data.test)[[0, 1]]
    assert str(error.value) == expected


def test_loader_worker_gives_the_cpu_paths_batches(bundle):
    def batches(split):
        loader = make_loader(split, batch_size=8, shuffle=True, num_workers=1,
                             generator=torch.Generator().manual_seed(3))
        return list(loader)

    expected = batches(bundle.train)
    got = [batch_to_device(images, targets, CPU) for images, targets in batches(encoded_copy(bundle.train))]
    assert len(got) == len(expected) == 3
    for (images, targets), (want_images, want_targets) in zip(got, expected):
        assert torch.equal(images, want_images) and torch.equal(targets, want_targets)
