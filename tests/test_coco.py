"""COCO 2017 multi-label reader on a tiny folder in the real format (imbalance_bench/data/coco.py)."""

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from coco_files import GRAY, IMAGE_WIDTH, file_name, image_id, unannotated_position, write_coco
from imbalance_bench.data.coco import (
    CocoSplit,
    build_coco,
    long_tail_multilabel_indices,
    multilabel_target_counts,
    random_resized_crop_box,
)
from imbalance_bench.data.images import make_loader
from imbalance_bench.errors import ConfigError, DataError

NUM_TRAIN, NUM_VAL = 24, 10
PERSON, DOG, STOP_SIGN, TOOTHBRUSH = 0, 16, 11, 79  # class indices: positions among the sorted category ids


def coco_kwargs(root, **over):
    kw = dict(name="coco", root=str(root), download=False, image_size=32, imbalance_factor=None, head_count=None, seed=0,
              limit_train=None, limit_test=None, bad_images="error", augment={"scale": [0.08, 1.0], "hflip": True},
              mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    kw.update(over)
    return kw


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    """A fixture folder shared by the tests that only read it."""
    return write_coco(tmp_path_factory.mktemp("coco"), num_train=NUM_TRAIN, num_val=NUM_VAL)


@pytest.fixture(scope="module")
def bundle(coco_root):
    return build_coco(**coco_kwargs(coco_root))


def load_instances(root, split="train"):
    return json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())


def save_instances(root, content, split="train"):
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(content))


def row_of(bundle, split, coco_image_id):
    return bundle.subset_indices[split].index(coco_image_id)


# ---------------------------------------------------------------- labels and the category mapping


def test_hand_labelled_image_has_the_set_of_its_categories(bundle):
    # Two people, a dog and a crowd region of toothbrushes: three positives, each counted once.
    target = bundle.train.targets[row_of(bundle, "train", image_id("train", 0))]
    assert torch.nonzero(target).flatten().tolist() == [PERSON, DOG, TOOTHBRUSH]
    val_target = bundle.test.targets[row_of(bundle, "test", image_id("val", 0))]
    assert [bundle.class_names[i] for i in torch.nonzero(val_target).flatten().tolist()] == ["bottle", "chair"]


def test_every_label_is_the_set_of_annotated_categories(coco_root, bundle):
    for split, json_split in (("train", "train"), ("test", "val")):
        content = load_instances(coco_root, json_split)
        names = {c["id"]: c["name"] for c in content["categories"]}
        annotated: dict[int, set[str]] = {}
        for ann in content["annotations"]:
            annotated.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
        split_data = getattr(bundle, split)
        assert sorted(bundle.subset_indices[split]) == sorted(annotated)
        for row, coco_image_id in enumerate(bundle.subset_indices[split]):
            positives = {bundle.class_names[i] for i in torch.nonzero(split_data.targets[row]).flatten().tolist()}
            assert positives == annotated[coco_image_id]


def test_non_contiguous_category_ids_map_in_id_order(bundle):
    assert len(bundle.class_names) == 80 and bundle.num_classes == 80
    assert bundle.info["category_ids"][:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13]  # id 12 is unused
    assert bundle.class_names[STOP_SIGN] == "stop sign" and bundle.info["category_ids"][STOP_SIGN] == 13
    assert bundle.class_names[DOG] == "dog" and bundle.info["category_ids"][DOG] == 18
    assert bundle.class_names[TOOTHBRUSH] == "toothbrush" and bundle.info["category_ids"][TOOTHBRUSH] == 90
    assert bundle.label_kind == "multi"


def test_category_order_in_the_file_does_not_matter(tmp_path, bundle):
    root = write_coco(tmp_path, num_train=NUM_TRAIN, num_val=NUM_VAL)
    for split in ("train", "val"):
        content = load_instances(root, split)
        content["categories"].reverse()
        save_instances(root, content, split)
    shuffled = build_coco(**coco_kwargs(root))
    assert shuffled.class_names == bundle.class_names
    assert torch.equal(shuffled.train.targets, bundle.train.targets)


def test_images_without_annotation_are_skipped_and_counted(bundle):
    assert bundle.info["skipped_no_annotation"] == {"train": 1, "test": 1}
    assert image_id("train", unannotated_position("train", NUM_TRAIN)) not in bundle.subset_indices["train"]
    assert image_id("val", unannotated_position("val", NUM_VAL)) not in bundle.subset_indices["test"]
    assert len(bundle.train) == NUM_TRAIN - 1 and len(bundle.test) == NUM_VAL - 1
    assert bundle.subset_indices["train"] == sorted(bundle.subset_indices["train"])


def test_class_counts_are_positives_per_class(coco_root, bundle):
    content = load_instances(coco_root, "train")
    with_person = {ann["image_id"] for ann in content["annotations"] if ann["category_id"] == 1}
    assert bundle.train_class_counts[PERSON] == len(with_person)
    assert bundle.train_class_counts == bundle.train.targets.sum(0).int().tolist()
    assert bundle.test_class_counts == bundle.test.targets.sum(0).int().tolist()
    assert bundle.train_class_counts[STOP_SIGN] == 0  # listed but never annotated
    assert sum(bundle.train_class_counts) > len(bundle.train)  # multi-label: some images hold several classes


def test_stats_record_is_json_and_names_the_files(coco_root, bundle):
    stats = json.loads(json.dumps(bundle.stats()))
    assert stats["label_kind"] == "multi" and stats["image_shape"] == [3, 32, 32]
    assert stats["train_counts"] == bundle.train_class_counts
    assert stats["annotation_files"]["test"].endswith("instances_val2017.json")
    assert stats["source"] == str(coco_root.resolve())
    assert stats["skipped_bad_images"] == {"train": 0, "test": 0}
    assert stats["subset_indices_kind"] == "coco_image_id"
    assert stats["imbalance_factor"] is None and stats["long_tail_counts"] is None


# ---------------------------------------------------------------- decoding and batches


def test_batches_have_the_loop_shapes_and_dtypes(bundle):
    for split in (bundle.train, bundle.test):
        images, targets = split[[3, 0, 5]]
        assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
        assert targets.shape == (3, 80) and targets.dtype == torch.float32
        assert torch.equal(targets, split.targets[[3, 0, 5]])
        assert split.image_shape == (3, 32, 32)
    image, target = bundle.test[2]
    assert image.shape == (3, 32, 32) and torch.equal(target, bundle.test.targets[2])


def test_test_split_resizes_the_whole_image(coco_root, bundle):
    # Fixture images are two flat colours, left and right half: a whole-image resize keeps both.
    row = row_of(bundle, "test", image_id("val", 2))
    image, _ = bundle.test[[row]]
    with Image.open(coco_root / "val2017" / file_name("val", 2)) as source:
        pixels = np.asarray(source.convert("RGB"), dtype=np.float64)
    left = pixels[:, : IMAGE_WIDTH // 4].mean(axis=(0, 1))
    right = pixels[:, -IMAGE_WIDTH // 4 :].mean(axis=(0, 1))
    assert np.abs(left - right).max() > 20  # the two halves really differ
    out = image[0].double()
    assert np.allclose(out[:, :, :8].mean(dim=(1, 2)).numpy(), left, atol=4)
    assert np.allclose(out[:, :, -8:].mean(dim=(1, 2)).numpy(), right, atol=4)


def test_grayscale_jpeg_becomes_three_equal_channels(coco_root, bundle):
    assert ("train", 1) in GRAY and ("val", 1) in GRAY
    with Image.open(coco_root / "train2017" / file_name("train", 1)) as source:
        assert source.mode == "L"
    for split, data, json_split in (("train", bundle.train, "train"), ("test", bundle.test, "val")):
        images, _ = data[[row_of(bundle, split, image_id(json_split, 1))]]
        assert images.shape == (1, 3, 32, 32)
        assert torch.equal(images[0, 0], images[0, 1]) and torch.equal(images[0, 1], images[0, 2])


def test_train_crops_follow_torch_rng(bundle):
    torch.manual_seed(3)
    first, _ = bundle.train[[0, 1, 2, 3]]
    torch.manual_seed(3)
    again, _ = bundle.train[[0, 1, 2, 3]]
    torch.manual_seed(4)
    other, _ = bundle.train[[0, 1, 2, 3]]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_random_resized_crop_box_respects_scale_and_bounds():
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(480, 640, (0.3, 0.6), generator=generator)
        assert 0 <= top and top + h <= 480 and 0 <= left and left + w <= 640
        assert 0.28 <= h * w / (480 * 640) <= 0.62  # rounding of h and w moves the area a little
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    # A 10:1 strip never fits a 4:3 crop of the whole area: centred fallback at the widest ratio.
    assert random_resized_crop_box(10, 100, (1.0, 1.0), generator=generator) == (0, 43, 10, 13)


def test_split_pickles_without_open_files(bundle):
    clone = pickle.loads(pickle.dumps(bundle.test))
    assert torch.equal(clone[[0, 1]][0], bundle.test[[0, 1]][0])


def test_split_works_through_make_loader_with_a_worker(bundle):
    loader = make_loader(bundle.test, batch_size=4, shuffle=False, num_workers=1)
    batches = list(loader)
    assert [len(images) for images, _ in batches] == [4, 4, 1]
    assert torch.equal(torch.cat([targets for _, targets in batches]), bundle.test.targets)
    assert batches[0][0].dtype == torch.uint8 and batches[0][0].shape[1:] == (3, 32, 32)
    train_loader = make_loader(bundle.train, batch_size=8, shuffle=True, num_workers=1,
                               generator=torch.Generator().manual_seed(0))
    seen = sum(len(images) for images, _ in train_loader)
    assert seen == len(bundle.train)


def test_crops_in_workers_depend_on_the_seed_and_epoch_only(bundle):
    """Each batch's crops come from (seed, epoch, batch number): the same with one worker or two,
    and whether or not the workers read an earlier epoch first (as a resumed run's do not);
    another epoch or seed crops differently."""

    def epoch_batches(epoch, num_workers=2, seed=7, after_epoch_0=False):
        generator = torch.Generator()
        loader = make_loader(bundle.train, 8, shuffle=True, num_workers=num_workers, generator=generator, seed=seed)
        if after_epoch_0:
            generator.manual_seed(0)
            loader.begin_epoch(0)
            list(loader)
        generator.manual_seed(0)  # the same order every time: only the crops may differ
        loader.begin_epoch(epoch)
        return list(loader)

    def same(a, b, part):
        return len(a) == len(b) and all(torch.equal(x[part], y[part]) for x, y in zip(a, b))

    expected = epoch_batches(1)
    for other in (epoch_batches(1, num_workers=1), epoch_batches(1, after_epoch_0=True)):
        assert same(other, expected, 0) and same(other, expected, 1)
    for other in (epoch_batches(2), epoch_batches(1, seed=8)):
        assert same(other, expected, 1) and not same(other, expected, 0)


def test_transform_is_flip_and_normalise_only(bundle):
    assert bundle.transform.crop_padding == 0 and bundle.transform.hflip is True
    no_flip = build_coco(**coco_kwargs(bundle.info["source"], augment={"scale": [0.5, 1.0], "hflip": False}))
    assert no_flip.transform.hflip is False and no_flip.train.scale == (0.5, 1.0)


# ---------------------------------------------------------------- long-tailed subsampling


def test_long_tail_counts_without_co_occurrence():
    targets = np.zeros((70, 3), dtype=bool)
    targets[0:10, 0] = True  # tail class: 10 images
    targets[10:30, 1] = True  # middle class: 20 images
    targets[30:70, 2] = True  # head class (last column: ranking goes by count, not position): 40
    assert multilabel_target_counts(targets.sum(0), 10).tolist() == [4, 12, 40]
    picked = long_tail_multilabel_indices(targets, imbalance_factor=10, seed=0)
    assert targets[picked].sum(0).tolist() == [4, 12, 40]
    assert np.all(np.diff(picked) > 0)
    assert np.array_equal(picked, long_tail_multilabel_indices(targets, 10, seed=0))
    assert not np.array_equal(picked, long_tail_multilabel_indices(targets, 10, seed=1))


def test_long_tail_head_count_shrinks_the_head():
    targets = np.zeros((70, 3), dtype=bool)
    targets[0:10, 0] = True
    targets[10:30, 1] = True
    targets[30:70, 2] = True
    # n_max = 20 instead of the head's own 40: targets 20 * (1/10)^(r/2) = 20, 6, 2 by rank
    assert multilabel_target_counts(targets.sum(0), 10, head_count=20).tolist() == [2, 6, 20]
    picked = long_tail_multilabel_indices(targets, 10, seed=0, head_count=20)
    assert targets[picked].sum(0).tolist() == [2, 6, 20]


def test_long_tail_co_occurring_class_overshoots_its_target():
    targets = np.zeros((52, 3), dtype=bool)
    targets[0:30, 0] = True  # head: 30 images
    targets[30:50, 1] = targets[30:50, 2] = True  # classes 1 and 2 together on 20 images
    targets[50:52, 1] = True  # class 1 alone on 2 more: 22 against 20
    wanted = multilabel_target_counts(targets.sum(0), 2).tolist()
    assert wanted == [30, 21, 15]
    for seed in range(5):
        counts = targets[long_tail_multilabel_indices(targets, 2, seed)].sum(0)
        # Class 2 is filled first (15); class 1 then needs 6 of its 7 remaining images, at least
        # 4 of which also hold class 2.
        assert counts[0] == 30 and counts[1] == 21
        assert counts[2] in (19, 20)


def test_long_tail_fills_the_rarest_target_first():
    targets = np.zeros((70, 3), dtype=bool)
    targets[0:40, 0] = True  # head, alone
    targets[40:70, 1] = True  # middle: 30 images, the last 10 of which also hold the tail class
    targets[60:70, 2] = True  # tail: 10 images
    assert multilabel_target_counts(targets.sum(0), 10).tolist() == [40, 12, 4]
    for seed in range(10):
        counts = targets[long_tail_multilabel_indices(targets, 10, seed)].sum(0)
        # The tail's 4 images come first; the middle class then tops up to exactly 12. Filling the
        # middle class first would leave the tail short of 4 and push the middle class past 12.
        assert counts[1] == 12 and 4 <= counts[2] <= 10 and counts[0] == 40


def test_long_tail_factor_one_keeps_every_labelled_image():
    rng = np.random.default_rng(0)
    targets = rng.random((50, 5)) < 0.3
    targets[7] = False  # no label: never picked
    picked = long_tail_multilabel_indices(targets, 1, seed=0)
    assert picked.tolist() == np.flatnonzero(targets.any(1)).tolist()


def test_long_tail_build_records_targets_and_realised_counts(tmp_path):
    root = write_coco(tmp_path, num_train=40, num_val=6, list_all_categories=False)
    full = build_coco(**coco_kwargs(root))
    long_tail = build_coco(**coco_kwargs(root, imbalance_factor=10))
    assert long_tail.class_names == ["person", "car", "dog", "bottle", "chair", "toothbrush"]
    wanted = long_tail.info["long_tail_target_counts"]
    assert wanted == multilabel_target_counts(full.train_class_counts, 10).tolist()
    assert wanted[0] == max(full.train_class_counts)  # n_max = the head class's count
    assert long_tail.info["long_tail_counts"] == long_tail.train_class_counts
    assert all(got >= want for got, want in zip(long_tail.train_class_counts, wanted))
    assert len(long_tail.train) < len(full.train)
    assert set(long_tail.subset_indices["train"]) < set(full.subset_indices["train"])
    assert long_tail.subset_indices["test"] == full.subset_indices["test"]  # val2017 is never subsampled
    again = build_coco(**coco_kwargs(root, imbalance_factor=10))
    assert again.subset_indices == long_tail.subset_indices
    assert long_tail.stats()["subset_sha256"] != full.stats()["subset_sha256"]


def test_limits_are_seeded_and_drawn_after_the_long_tail(tmp_path):
    root = write_coco(tmp_path, num_train=40, num_val=6, list_all_categories=False)
    limited = build_coco(**coco_kwargs(root, limit_train=8, limit_test=3))
    assert len(limited.train) == 8 and len(limited.test) == 3
    assert build_coco(**coco_kwargs(root, limit_train=8, limit_test=3)).subset_indices == limited.subset_indices
    other_seed = build_coco(**coco_kwargs(root, limit_train=8, seed=1))
    assert other_seed.subset_indices["train"] != limited.subset_indices["train"]
    long_tail = build_coco(**coco_kwargs(root, imbalance_factor=10))
    both = build_coco(**coco_kwargs(root, imbalance_factor=10, limit_train=8))
    assert len(both.train) == 8 and set(both.subset_indices["train"]) <= set(long_tail.subset_indices["train"])
    assert both.train_class_counts == both.train.targets.sum(0).int().tolist()


# ---------------------------------------------------------------- errors


def test_missing_annotation_file_names_it_and_the_layout(tmp_path):
    root = write_coco(tmp_path, num_train=4, num_val=3)
    (root / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(DataError, match=r"instances_val2017\.json: file not found; put COCO 2017 under dataset.root"):
        build_coco(**coco_kwargs(root))


def test_truncated_json_names_the_file_and_position(tmp_path):
    root = write_coco(tmp_path, num_train=4, num_val=3)
    path = root / "annotations" / "instances_train2017.json"
    path.write_text(path.read_text()[:300])
    with pytest.raises(DataError, match=r"instances_train2017\.json: not valid JSON \(.+ at line 1 column \d+\)"):
        build_coco(**coco_kwargs(root))


def test_binary_garbage_instead_of_json(tmp_path):
    root = write_coco(tmp_path, num_train=4, num_val=3)
    (root / "annotations" / "instances_val2017.json").write_bytes(b"\xff\xd8\xff\xe0 not json")
    with pytest.raises(DataError, match=r"instances_val2017\.json: not valid JSON"):
        build_coco(**coco_kwargs(root))


@pytest.mark.parametrize(
    "breaker, message",
    [
        (lambda c: c.pop("categories"), r"not a COCO instances file \(no 'categories' list\)"),
        (lambda c: c.pop("images"), r"not a COCO instances file \(no 'images' list\)"),
        (lambda c: c["annotations"][2].update(category_id=12), r"annotation \d+ refers to unknown category_id 12"),
        (lambda c: c["annotations"][0].update(image_id=999), r"annotation \d+ refers to unknown image_id 999"),
        (lambda c: c["images"].append(dict(c["images"][0])), r"images id \d+ appears twice"),
        (lambda c: c["categories"][5].pop("name"), r"categories\[5\] needs an integer 'id' and a string 'name'"),
    ],
)
def test_wrong_structure_names_the_file_and_problem(tmp_path, breaker, message):
    root = write_coco(tmp_path, num_train=4, num_val=3)
    content = load_instances(root, "train")
    breaker(content)
    save_instances(root, content, "train")
    with pytest.raises(DataError, match=r"instances_train2017\.json: " + message):
        build_coco(**coco_kwargs(root))


def test_top_level_not_an_object(tmp_path):
    root = write_coco(tmp_path, num_train=4, num_val=3)
    (root / "annotations" / "instances_val2017.json").write_text("[]")
    with pytest.raises(DataError, match=r"instances_val2017\.json: not a COCO instances file \(top level is a list"):
        build_coco(**coco_kwargs(root))


def test_val_categories_must_match_train(tmp_path):
    root = write_coco(tmp_path, num_train=4, num_val=3)
    content = load_instances(root, "val")
    content["categories"][0]["name"] = "human"
    save_instances(root, content, "val")
    with pytest.raises(DataError, match=r"instances_val2017\.json: its categories differ"):
        build_coco(**coco_kwargs(root))


def test_missing_image_errors_naming_it(tmp_path):
    root = write_coco(tmp_path, num_train=6, num_val=3)
    (root / "train2017" / file_name("train", 3)).unlink()
    with pytest.raises(DataError) as info:
        build_coco(**coco_kwargs(root))
    message = str(info.value)
    assert message.startswith(f"{root.resolve() / 'train2017' / file_name('train', 3)}: file not found")
    assert "dataset.bad_images=skip" in message and "\n" not in message


def test_missing_image_skipped_and_counted(tmp_path):
    root = write_coco(tmp_path, num_train=6, num_val=3)
    (root / "train2017" / file_name("train", 3)).unlink()
    data = build_coco(**coco_kwargs(root, bad_images="skip"))
    assert data.info["skipped_bad_images"] == {"train": 1, "test": 0}
    assert data.info["skipped_bad_image_files"] == {"train": [file_name("train", 3)], "test": []}
    assert image_id("train", 3) not in data.subset_indices["train"]
    assert len(data.train) == 6 - 1 - 1  # one unannotated, one missing
    assert data.info["skipped_no_annotation"]["train"] == 1


def test_garbage_image_errors_or_is_skipped(tmp_path):
    root = write_coco(tmp_path, num_train=4, num_val=4)
    (root / "val2017" / file_name("val", 2)).write_bytes(b"<html>403 Forbidden</html>" * 8)
    with pytest.raises(DataError, match=rf"val2017/{file_name('val', 2)}: unreadable image \(not a JPEG"):
        build_coco(**coco_kwargs(root))
    data = build_coco(**coco_kwargs(root, bad_images="skip"))
    assert data.info["skipped_bad_images"] == {"train": 0, "test": 1}
    assert image_id("val", 2) not in data.subset_indices["test"] and len(data.test) == 2


def test_truncated_jpeg_fails_when_decoded_naming_the_file(tmp_path):
    root = write_coco(tmp_path, num_train=4, num_val=3)
    path = root / "train2017" / file_name("train", 2)
    blob = path.read_bytes()
    path.write_bytes(blob[:-64])  # header intact, so the load-time check passes
    data = build_coco(**coco_kwargs(root))
    row = row_of(data, "train", image_id("train", 2))
    with pytest.raises(DataError, match=rf"{file_name('train', 2)}: unreadable image \(.*truncated"):
        data.train[[row]]


def test_missing_image_folder_names_it(tmp_path):
    root = write_coco(tmp_path, num_train=4, num_val=3)
    shutil.rmtree(root / "val2017")
    with pytest.raises(DataError, match=r"val2017: image folder not found"):
        build_coco(**coco_kwargs(root))


def test_download_is_refused_with_the_layout(tmp_path):
    with pytest.raises(DataError, match=r"automatic download of COCO 2017 .* not supported.*instances_train2017\.json"):
        build_coco(**coco_kwargs(tmp_path, download=True))


def test_a_mean_and_std_of_other_than_three_channels_name_the_keys(tmp_path):
    """The builder checks what only the data knows (3 channels); the ranges of its keys are the schema's."""
    with pytest.raises(ConfigError, match=r"dataset\.mean/dataset\.std must have 3 values"):
        build_coco(**coco_kwargs(tmp_path, mean=[0.5]))


def test_split_rejects_mismatched_targets():
    with pytest.raises(ValueError, match="2 paths"):
        CocoSplit(["a.jpg", "b.jpg"], torch.zeros(3, 80), 32, train=False, scale=(0.5, 1.0))
