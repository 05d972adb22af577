"""Crafted dataset files: every one is refused with one DataError line naming the file and the
problem, never a traceback, and a train split that leaves classes without images warns once.

The files are written in their real formats (idx, COCO instances JSON with JPEGs); the readers
are the real ones.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from coco_files import image_id, write_coco
from conftest import SMOKE
from dataset_files import idx_header, write_cifar10, write_cifar100, write_idx, write_mnist_from_digits
from imbalance_bench import cli
from imbalance_bench.data import MnistLT, downloads_missing, missing_data
from imbalance_bench.data import mnist as mnist_module
from imbalance_bench.data.cifar import load_cifar
from imbalance_bench.data.coco import build_coco
from imbalance_bench.data.mnist import FILES, load_mnist
from imbalance_bench.data.multimnist import build_multimnist
from imbalance_bench.errors import EXIT_USER_ERROR, DataError

MNIST_KWARGS = dict(download=False, imbalance_factor=10, imbalance_type="exp", seed=0, limit_train=None,
                    limit_test=None, augment={"crop_padding": 2, "hflip": False}, mean=[0.13], std=[0.3])
COCO_KWARGS = dict(name="coco", download=False, image_size=32, imbalance_factor=None, head_count=None, seed=0,
                   limit_train=None, limit_test=None, bad_images="error", augment={"scale": [0.5, 1.0], "hflip": True},
                   mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def write_tiny_mnist(root: Path) -> Path:
    """Four plain idx files: 3 train and 1 test 28x28 image per digit."""
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", 3), ("t10k", 1)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        write_idx(root / f"{split}-images-idx3-ubyte", np.zeros((len(labels), 28, 28), np.uint8), compress=False)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels, compress=False)
    return root


def mnist_error(root: Path) -> str:
    with pytest.raises(DataError) as err:
        load_mnist(root, download=False)
    message = str(err.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ MNIST idx headers

IMAGES, LABELS = FILES["train_images"], FILES["train_labels"]

IDX_CASES = [
    # (file, its bytes, what the message says)
    ("zero images", IMAGES, idx_header([0, 28, 28]),
     "holds 0 images (the idx header's count is 0); it needs at least one"),
    ("zero labels", LABELS, idx_header([0]), "holds 0 labels"),
    ("a zero dimension", IMAGES, idx_header([30, 0, 28]), "the dimensions [30, 0, 28]; each must be >= 1"),
    # 2**22 * 2**21 * 2**21 = 2**64: a product in 64-bit integers wraps to 0, matching the empty payload
    ("dimensions whose product overflows", IMAGES, idx_header([2**22, 2**21, 2**21]),
     f"the dimensions {[2**22, 2**21, 2**21]} (18446744073709551616 bytes); more than the 4 GiB"),
    ("absurd dimensions", IMAGES, idx_header([2**32 - 1] * 3) + bytes(10),
     f"({(2**32 - 1) ** 3} bytes); more than the 4 GiB this reader takes"),
    ("a payload shorter than the header says", IMAGES, idx_header([30, 28, 28]) + bytes(10),
     f"holds 10 bytes of data, header says {30 * 28 * 28}"),
    ("more data than the header says", IMAGES, idx_header([30, 28, 28]) + bytes(30 * 28 * 28 + 5),
     f"holds more than {30 * 28 * 28} bytes of data"),
    ("float data", IMAGES, idx_header([30, 28, 28], type_code=0x0D) + bytes(30 * 28 * 28 * 4),
     "wrong idx magic number 0x00000d03: data type 0x0d (float), not 0x08 (unsigned byte)"),
    ("labels with 3 dimensions", LABELS, idx_header([30, 1, 1]) + bytes(30), "3 dimensions, not 1"),
    ("not an idx file", IMAGES, b"\x89PNG" + bytes(100), "not an idx file (its first two bytes must be zero)"),
    ("header cut short", IMAGES, idx_header([30, 28, 28])[:10], "too short for an idx header of 3 dimensions"),
    ("empty file", LABELS, b"", "too short for an idx header"),
    ("images that are not 28x28", IMAGES, idx_header([30, 5, 5]) + bytes(30 * 25),
     "images are 5x5, MNIST images must be 28x28"),
    ("labels past 9", LABELS, idx_header([30]) + bytes(29) + b"\x0c", "labels outside 0..9"),
]


@pytest.mark.parametrize("case, stem, blob, expected", IDX_CASES, ids=[c[0] for c in IDX_CASES])
def test_a_crafted_idx_file_is_one_line_naming_it(tmp_path, case, stem, blob, expected):
    root = write_tiny_mnist(tmp_path)
    (root / stem).write_bytes(blob)
    message = mnist_error(root)
    assert message.startswith(f"{root / stem}: "), message
    assert expected in message


def test_a_corrupt_gzip_stream_names_the_file(tmp_path):
    root = write_tiny_mnist(tmp_path)
    (root / IMAGES).unlink()
    gz = root / f"{IMAGES}.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\x07" * 20)  # a valid header, a bad deflate block
    assert mnist_error(root).startswith(f"{gz}: unreadable idx file (Error -3 while decompressing data")


def test_a_gzip_that_expands_past_its_header_is_refused(tmp_path):
    root = write_tiny_mnist(tmp_path)
    (root / IMAGES).unlink()
    gz = root / f"{IMAGES}.gz"
    with gzip.open(gz, "wb") as fh:  # claims 30 images, expands to 1 MB more
        fh.write(idx_header([30, 28, 28]) + bytes(30 * 28 * 28 + (1 << 20)))
    assert f"{gz}: holds more than {30 * 28 * 28} bytes of data, header says" in mnist_error(root)


def test_image_and_label_counts_must_agree(tmp_path):
    root = write_tiny_mnist(tmp_path)
    write_idx(root / LABELS, np.zeros(29, np.uint8), compress=False)
    assert mnist_error(root) == f"{root / LABELS}: holds 29 labels but {IMAGES} holds 30 images; they must be equal"


@pytest.mark.parametrize("split, stem", [("train", LABELS), ("test", FILES["test_labels"])])
def test_a_digit_missing_from_a_split_is_refused(tmp_path, split, stem):
    root = write_tiny_mnist(tmp_path)
    count = 30 if split == "train" else 10
    write_idx(root / stem, np.arange(count, dtype=np.uint8) % 9, compress=False)  # no 9
    with pytest.raises(DataError) as err:
        MnistLT(root=str(root), **MNIST_KWARGS).load()
    assert str(err.value) == f"{root}: the {split} split has no image of class 9; every class needs at least one"


# ------------------------------------------------------------------ MultiMNIST cache (an npz under dataset.root)


@pytest.fixture
def multimnist_cache(tmp_path):
    """(the generation keys, the cache file they wrote) on the sklearn digits in MNIST format."""
    keys = dict(name="multimnist", root=str(write_mnist_from_digits(tmp_path)), download=False, canvas_size=56,
                min_digits=1, max_digits=3, num_train=60, num_test=30, imbalance_factor=4.0, overlap=True, seed=0,
                augment={"crop_padding": 0, "hflip": False}, mean=[0.13], std=[0.3])
    return keys, Path(build_multimnist(**keys).info["cache_file"])


def test_a_cache_member_with_a_corrupt_deflate_stream_is_regenerated(multimnist_cache, caplog):
    keys, path = multimnist_cache
    with zipfile.ZipFile(path) as archive:
        offset = archive.getinfo("train_images.npy").header_offset
    blob = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", blob[offset + 26 : offset + 30])  # zip local file header
    blob[offset + 30 + name_length + extra_length] = 0x07  # the member's first deflate block has the reserved type
    path.write_bytes(bytes(blob))
    with caplog.at_level(logging.WARNING):
        assert build_multimnist(**keys).info["cache"] == "created"
    assert f"{path}: unusable MultiMNIST cache (Error -3 while decompressing data: invalid block type)" in caplog.text


def test_a_cache_array_of_an_absurd_shape_is_regenerated(multimnist_cache, caplog):
    keys, path = multimnist_cache
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**13, 1, 56, 56)})
    members["train_images.npy"] = header.getvalue() + bytes(64)
    with zipfile.ZipFile(path, "w") as archive:  # the stored key still matches: only the array is wrong
        for name, data in members.items():
            archive.writestr(name, data)
    with caplog.at_level(logging.WARNING):
        assert build_multimnist(**keys).info["cache"] == "created"
    assert f"{path}: unusable MultiMNIST cache (Unable to allocate" in caplog.text


# ------------------------------------------------------------------ COCO instances JSON


@pytest.fixture
def coco_root(tmp_path) -> Path:
    return write_coco(tmp_path / "coco", num_train=6, num_val=4)


def edit_instances(root: Path, edit, split: str = "train") -> Path:
    path = root / "annotations" / f"instances_{split}2017.json"
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))
    return path


def coco_error(root: Path) -> str:
    with pytest.raises(DataError) as err:
        build_coco(root=str(root), **COCO_KWARGS)
    message = str(err.value)
    assert "\n" not in message
    return message


def set_in(key: str, position: int, **values):
    return lambda content: content[key][position].update(values)


COCO_CASES = [
    # (edit of the train instances file, what the message says after the file's name)
    ("an image id of 10**30", set_in("images", 0, id=10**30),
     "images[0] has id 1000000000000000000000000000000; ids must fit a 64-bit integer (-2**63 to 2**63-1)"),
    ("an image id of -2**63-1", set_in("images", 2, id=-(2**63) - 1), f"images[2] has id {-(2**63) - 1}; ids must fit"),
    ("a category id of 2**63", set_in("categories", 3, id=2**63), f"categories[3] has id {2**63}; ids must fit"),
    ("an image id that is a float", set_in("images", 1, id=1.0), "images[1] needs an integer 'id' and a string"),
    ("an image id that is a bool", set_in("images", 1, id=True), "images[1] needs an integer 'id'"),
    ("a file_name that is a number", set_in("images", 1, file_name=7), "images[1] needs an integer 'id' and a string "
     "'file_name'"),
    ("an image entry that is a list", lambda c: c["images"].__setitem__(0, [1, "a.jpg"]), "images[0] needs an integer"),
    ("images that is an object", lambda c: c.__setitem__("images", {}), "not a COCO instances file (no 'images' list)"),
    ("a file_name that climbs out", set_in("images", 0, file_name="../../../../etc/hostname"),
     "has file_name '../../../../etc/hostname': its '..' part leaves the image folder; a file_name must be a "
     "relative path inside the split's image folder"),
    ("an absolute file_name", set_in("images", 0, file_name="/etc/hostname"),
     "has file_name '/etc/hostname': it is an absolute path"),
    ("a file_name with a NUL", set_in("images", 0, file_name="a\0.jpg"), "it is empty or holds a NUL character"),
    ("an empty file_name", set_in("images", 0, file_name=""), "has file_name '': it is empty"),
    ("an annotation on image 10**30", set_in("annotations", 0, image_id=10**30),
     "refers to unknown image_id 1000000000000000000000000000000; it must be the integer id of an entry in 'images'"),
    ("an annotation's image_id as a string", set_in("annotations", 0, image_id="1000"),
     "refers to unknown image_id '1000'; it must be the integer id"),
    ("an unknown category", set_in("annotations", 1, category_id=12),
     "refers to unknown category_id 12; it must be the integer id of an entry in 'categories'"),
    ("an annotation that is a string", lambda c: c["annotations"].__setitem__(0, "x"),
     "annotations[0] is a str, not an object"),
    ("a long value on several lines", set_in("annotations", 0, id="a\nb", image_id="x" * 10000),
     "annotations[0] refers to unknown image_id 'xxxxxxxx"),
    ("no annotation at all", lambda c: c.__setitem__("annotations", []),
     "none of its 6 images has an annotation; a split needs at least one annotated image"),
]


@pytest.mark.parametrize("case, edit, expected", COCO_CASES, ids=[c[0] for c in COCO_CASES])
def test_a_crafted_coco_file_is_one_line_naming_it(coco_root, case, edit, expected):
    path = edit_instances(coco_root, edit)
    message = coco_error(coco_root)
    assert message.startswith(f"{path}: "), message
    assert expected in message
    assert len(message) < 400  # a value from the file is shown cut short


def test_a_file_name_out_of_the_image_folder_is_never_opened(coco_root):
    """Before the check, `../outside.jpg` was read as the image: it is a valid JPEG next to train2017/."""
    (coco_root / "outside.jpg").write_bytes(next((coco_root / "train2017").glob("*.jpg")).read_bytes())
    path = edit_instances(coco_root, set_in("images", 0, file_name="../outside.jpg"))
    assert coco_error(coco_root).startswith(f"{path}: images[0] (id ")


def test_plain_relative_names_in_subfolders_are_allowed(coco_root):
    folder = coco_root / "train2017"

    def move_first_image(content):
        (entry,) = [e for e in content["images"] if e["id"] == image_id("train", 0)]  # annotated by hand
        (folder / "sub").mkdir()
        (folder / entry["file_name"]).rename(folder / "sub" / "x.jpg")
        entry["file_name"] = "sub/./x.jpg"

    edit_instances(coco_root, move_first_image)
    data = build_coco(root=str(coco_root), **COCO_KWARGS)
    position = data.subset_indices["train"].index(image_id("train", 0))
    assert data.train.paths[position] == str(folder / "sub" / "x.jpg")
    assert data.train[[position]][0].shape == (1, 3, 32, 32)


@pytest.mark.parametrize("text, expected", [
    ("[" * 100000 + "]" * 100000, "not usable JSON (arrays or objects nested too deeply)"),
    ('{"images": [{"id": ' + "9" * 5000 + "}]}", "not usable JSON (Exceeds the limit (4300 digits)"),
])
def test_json_that_python_cannot_parse_is_one_line(coco_root, text, expected):
    path = coco_root / "annotations" / "instances_val2017.json"
    path.write_text(text)
    assert coco_error(coco_root).startswith(f"{path}: {expected}")


# ------------------------------------------------------------------ presence checks (a table runs them before any job)


@pytest.mark.parametrize("source, variant, write", [("Cifar10LT", "cifar10", write_cifar10),
                                                    ("Cifar100LT", "cifar100", write_cifar100)])
def test_cifar_is_present_with_its_folder_and_missing_says_what_the_reader_says(tmp_path, source, variant, write):
    cfg = {"_target_": f"imbalance_bench.data.{source}", "root": str(tmp_path), "download": False}
    with pytest.raises(DataError) as err:
        load_cifar(tmp_path, variant, download=False)
    assert missing_data(cfg) == str(err.value)
    assert not downloads_missing(cfg) and downloads_missing({**cfg, "download": True})
    write(tmp_path, 1, 1)
    assert missing_data(cfg) is None


@pytest.mark.parametrize("source", ["MnistLT", "MultiMnist"])
def test_mnist_is_present_in_the_root_or_bundled(tmp_path, monkeypatch, source):
    """MultiMNIST is drawn from MNIST, so it needs what mnist_lt needs."""
    cfg = {"_target_": f"imbalance_bench.data.{source}", "root": str(tmp_path), "download": False}
    assert missing_data(cfg) is None  # the bundled copy
    monkeypatch.setattr(mnist_module, "bundled_mnist_folder", lambda: None)
    assert missing_data(cfg) == mnist_error(tmp_path)
    write_tiny_mnist(tmp_path)
    assert missing_data(cfg) is None


@pytest.mark.parametrize("part", ["annotations/instances_train2017.json", "train2017",
                                  "annotations/instances_val2017.json", "val2017"])
def test_coco_needs_both_instances_files_and_image_folders(coco_root, part):
    cfg = {"_target_": "imbalance_bench.data.Coco", "root": str(coco_root), "download": False}
    assert missing_data(cfg) is None
    path = coco_root / part
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    message = missing_data(cfg)
    assert message.startswith(f"{path}: ") and "https://cocodataset.org/#download" in message
    assert coco_error(coco_root) == message
    assert not downloads_missing({**cfg, "download": True})  # COCO is never downloaded


# ------------------------------------------------------------------ through the command line


@pytest.fixture
def run_cli(tmp_path, imbench_in_process):
    """`imbench ARGS` (a smoke run into tmp_path/run) in-process; returns (exit code, stderr)."""

    def _run(*args):
        return imbench_in_process(*args, *SMOKE, f"hydra.run.dir={tmp_path / 'run'}")

    return _run


def assert_one_error_line(err: str, *expected: str) -> None:
    assert "Traceback" not in err and "Error in call to target" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("imbench: error: ")]
    assert len(lines) == 1, err[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]


def test_cli_idx_with_zero_images_is_one_line(tmp_path, run_cli):
    root = write_tiny_mnist(tmp_path / "mnist")
    (root / IMAGES).write_bytes(idx_header([0, 28, 28]))
    code, err = run_cli("dataset=mnist_lt", f"dataset.root={root}")
    assert code == EXIT_USER_ERROR
    assert_one_error_line(err, f"{root / IMAGES}: holds 0 images")


def test_cli_coco_image_id_of_10_to_the_30_is_one_line(tmp_path, run_cli):
    root = write_coco(tmp_path / "coco", num_train=6, num_val=4)
    path = edit_instances(root, set_in("images", 0, id=10**30), split="val")
    code, err = run_cli("dataset=coco", "loss=bce", f"dataset.root={root}", "dataset.image_size=32")
    assert code == EXIT_USER_ERROR
    assert_one_error_line(err, f"{path}: images[0] has id 1000000000000000000000000000000")


def test_cli_coco_file_name_that_climbs_out_is_one_line(tmp_path, run_cli):
    root = write_coco(tmp_path / "coco", num_train=6, num_val=4)
    path = edit_instances(root, set_in("images", 0, file_name="../../../../etc/hostname"))
    code, err = run_cli("dataset=coco", "loss=bce", f"dataset.root={root}", "dataset.image_size=32")
    assert code == EXIT_USER_ERROR
    assert_one_error_line(err, str(path), "'../../../../etc/hostname': its '..' part leaves the image folder")


# ------------------------------------------------------------------ classes left without train images


def zero_image_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "imbench" and "no train images" in r.getMessage()]


def test_classes_without_train_images_warn_once_naming_them(tmp_path, caplog):
    write_mnist_from_digits(tmp_path)
    with caplog.at_level(logging.WARNING, logger="imbench"):
        data = MnistLT(root=str(tmp_path), **{**MNIST_KWARGS, "imbalance_factor": 1e9}).load()
    empty = [str(c) for c, n in enumerate(data.train_class_counts) if n == 0]
    assert len(empty) >= 5 and data.train_class_counts[0] > 0  # the profile rounds the tail to 0 images
    assert zero_image_warnings(caplog) == [
        f"dataset mnist_lt: {len(empty)} of 10 classes have no train images, so the model never trains on them: "
        + ", ".join(empty)
    ]


def test_a_normal_split_does_not_warn(tmp_path, caplog):
    write_mnist_from_digits(tmp_path)
    with caplog.at_level(logging.WARNING, logger="imbench"):
        data = MnistLT(root=str(tmp_path), **MNIST_KWARGS).load()
    assert min(data.train_class_counts) > 0
    assert zero_image_warnings(caplog) == []


def test_a_multilabel_split_warns_too_and_lists_at_most_ten(coco_root, caplog):
    """write_coco lists all 80 categories and annotates 6: the other 74 have no train image."""
    with caplog.at_level(logging.WARNING, logger="imbench"):
        data = build_coco(root=str(coco_root), **COCO_KWARGS)
    empty = [name for name, n in zip(data.class_names, data.train_class_counts) if n == 0]
    (message,) = zero_image_warnings(caplog)
    assert message.startswith(f"dataset coco: {len(empty)} of 80 classes have no train images")
    assert message.endswith(": " + ", ".join(empty[:10]) + f" and {len(empty) - 10} more")
