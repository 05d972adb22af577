"""Writer for a tiny COCO 2017-format folder: instances JSON files plus small generated JPEGs.

The JSON has the real structure (info, licenses, images, annotations, categories) and lists all
80 categories with their real, non-contiguous ids (1..90); only a few of them get instances.
Every image is two flat colours, left half and right half, so a test can tell a resize of the
whole image from a crop or a transpose.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# (id, name, supercategory) of the 80 COCO 2017 categories (Lin et al. 2014); ids 12, 26, 29, 30,
# 45, 66, 68, 69, 71, 83 and 91 are unused.
COCO_CATEGORIES = [
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"), (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"),
    (9, "boat", "vehicle"), (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"),
    (20, "sheep", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"), (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"), (36, "snowboard", "sports"),
    (37, "sports ball", "sports"), (38, "kite", "sports"), (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"), (41, "skateboard", "sports"), (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"), (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"), (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"),
    (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"),
    (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"), (62, "chair", "furniture"),
    (63, "couch", "furniture"), (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
    (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
    (76, "keyboard", "electronic"), (77, "cell phone", "electronic"), (78, "microwave", "appliance"),
    (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"), (86, "vase", "indoor"),
    (87, "scissors", "indoor"), (88, "teddy bear", "indoor"), (89, "hair drier", "indoor"),
    (90, "toothbrush", "indoor"),
]

# Categories that get instances, in this order (num_classes takes a prefix); spread over the id range.
ANNOTATED_ORDER = [1, 3, 18, 44, 62, 90, 13, 27, 52, 72, 85, 88]
# Chance that a generated image holds each annotated category: the first ones are frequent.
PRESENCE = [0.6, 0.45, 0.3, 0.2, 0.12, 0.08, 0.06, 0.05, 0.04, 0.03, 0.03, 0.02]

# Hand-set images: (split, position) -> category ids of their instances (repeats = several instances).
# Train image 0 holds two people, a dog and a crowd region of toothbrushes; label {person, dog, toothbrush}.
HAND_LABELS = {("train", 0): [1, 1, 18, 90], ("val", 0): [62, 44, 62]}
CROWD = {("train", 0): 90}  # the category whose instance on that image is an iscrowd=1 RLE region
GRAY = {("train", 1), ("val", 1)}  # saved as 8-bit grayscale JPEGs
IMAGE_HEIGHT, IMAGE_WIDTH = 40, 56
FIRST_ID = {"train": 1000, "val": 500000}
ID_STEP = {"train": 7, "val": 11}  # non-contiguous image ids, like COCO's


def image_id(split: str, position: int) -> int:
    """COCO image id of the `position`-th generated image of `split` ("train" or "val")."""
    return FIRST_ID[split] + ID_STEP[split] * position


def file_name(split: str, position: int) -> str:
    return f"{image_id(split, position):012d}.jpg"


def unannotated_position(split: str, count: int) -> int:
    """The last image of each split has no annotation at all."""
    return count - 1


def _labels_for(split: str, position: int, count: int, annotated: list[int], rng: np.random.Generator) -> list[int]:
    if (split, position) in HAND_LABELS:
        return list(HAND_LABELS[split, position])
    if position == unannotated_position(split, count):
        return []
    present = [cid for cid, p in zip(annotated, PRESENCE) if rng.random() < p]
    if not present:
        present = [annotated[int(rng.integers(len(annotated)))]]
    # Some categories get a second instance, which must not change the label.
    return present + [cid for cid in present if rng.random() < 0.3]


def _write_image(path: Path, gray: bool, rng: np.random.Generator) -> None:
    left, right = rng.integers(0, 256, size=(2, 3))
    pixels = np.empty((IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
    pixels[:, : IMAGE_WIDTH // 2] = left
    pixels[:, IMAGE_WIDTH // 2 :] = right
    image = Image.fromarray(pixels)
    (image.convert("L") if gray else image).save(path, format="JPEG", quality=95)


def _instance(ann_id: int, img_id: int, category_id: int, crowd: bool, rng: np.random.Generator) -> dict:
    x, y = float(rng.integers(0, IMAGE_WIDTH // 2)), float(rng.integers(0, IMAGE_HEIGHT // 2))
    w, h = float(rng.integers(4, IMAGE_WIDTH // 2)), float(rng.integers(4, IMAGE_HEIGHT // 2))
    if crowd:  # crowd regions carry an uncompressed RLE mask: run lengths over the column-major image
        inside = int(w * h)
        segmentation = {"counts": [inside, IMAGE_HEIGHT * IMAGE_WIDTH - inside], "size": [IMAGE_HEIGHT, IMAGE_WIDTH]}
    else:
        segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return {"id": ann_id, "image_id": img_id, "category_id": category_id, "bbox": [x, y, w, h],
            "area": w * h, "iscrowd": int(crowd), "segmentation": segmentation}


def write_coco(
    root: Path, num_train: int = 24, num_val: int = 10, num_classes: int = 6, seed: int = 0,
    list_all_categories: bool = True,
) -> Path:
    """`root/annotations/instances_{train,val}2017.json` plus `root/train2017/`, `root/val2017/` JPEGs.

    `num_classes` is how many categories get instances (a prefix of ANNOTATED_ORDER). All 80 are
    listed, as in the real files, unless `list_all_categories` is false; then only the annotated
    ones and those of HAND_LABELS are. Train and val image 0 carry HAND_LABELS, image 1 is grayscale
    and the last image has no annotation. The images list is written shuffled, as the real files'
    order is arbitrary.
    Returns `root` (what `dataset.root` points at).
    """
    if not 1 <= num_classes <= len(ANNOTATED_ORDER):
        raise ValueError(f"num_classes must be in 1..{len(ANNOTATED_ORDER)}, got {num_classes}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    annotated = ANNOTATED_ORDER[:num_classes]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    listed = set(annotated).union(*HAND_LABELS.values())
    categories = [{"id": cid, "name": name, "supercategory": sup} for cid, name, sup in COCO_CATEGORIES
                  if list_all_categories or cid in listed]
    next_ann_id = 1
    for split, count in (("train", num_train), ("val", num_val)):
        folder = root / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for position in range(count):
            img_id = image_id(split, position)
            _write_image(folder / file_name(split, position), (split, position) in GRAY, rng)
            images.append({"id": img_id, "file_name": file_name(split, position), "width": IMAGE_WIDTH,
                           "height": IMAGE_HEIGHT, "license": 1, "date_captured": "2013-11-14 11:18:45"})
            for category_id in _labels_for(split, position, count, annotated, rng):
                crowd = CROWD.get((split, position)) == category_id
                annotations.append(_instance(next_ann_id, img_id, category_id, crowd, rng))
                next_ann_id += 1
        content = {
            "info": {"description": "imbalance-bench test fixture in COCO 2017 format", "version": "1.0", "year": 2017},
            "licenses": [{"id": 1, "name": "test fixture", "url": ""}],
            "images": [images[i] for i in rng.permutation(len(images))],
            "annotations": annotations,
            "categories": categories,
        }
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(content))
    return root
