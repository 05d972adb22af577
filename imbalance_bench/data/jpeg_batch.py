"""JPEG batches read in DataLoader workers and decoded in one call on the training device.

COCO at 224 px is limited by JPEG decoding in the loader's workers. In this mode a worker only
reads each file's bytes and draws its crop box; the main process decodes the whole batch with one
`torchvision.io.decode_jpeg(list, device=...)` call (batched nvJPEG on CUDA, a loop on the CPU),
then crops and resizes each image there with the same function as the CPU path. Given the same
boxes the images equal the CPU path's exactly on the CPU. On CUDA the resize runs in float and
rounds up to one grey level apart, and nvJPEG upsamples 4:2:0 chroma more simply than
libjpeg-turbo, so such JPEGs (most photos) differ by more at sharp colour edges.
"""

from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch

from imbalance_bench.errors import DataError

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # (top, left, h, w)
JPEG_END = b"\xff\xd9"  # the EOI marker that closes every complete JPEG
_TORCHVISION_LOCATION = re.compile(r"^\w+, \S+:\d+, ")  # "decode_jpeg, /path/decode_jpeg.cpp:171, ..."


def unreadable(path: str, exc: Exception) -> DataError:
    """The one-line error for an image file that cannot be read or decoded."""
    reason = _TORCHVISION_LOCATION.sub("", str(exc)).replace("\n", " ")
    return DataError(f"{path}: unreadable image ({reason})")


def skip_or_raise(exc: DataError, skip: bool) -> None:
    """Re-raise `exc`, or with `skip` warn that its image is left out of the batch."""
    if not skip:
        raise exc
    log.warning("%s; skipped (dataset.bad_images=skip)", exc)


@contextmanager
def quiet_decoders() -> Iterator[None]:
    """torchvision 0.29 deprecates its decoders in favour of TorchCodec; they still work."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
        yield


def read_encoded(path: str) -> bytes:
    """A file's bytes."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise unreadable(path, exc) from None


def as_uint8(buffer: bytearray) -> torch.Tensor:
    """A 1-D uint8 tensor sharing `buffer` (a bytearray, as torch warns on read-only bytes)."""
    return torch.from_numpy(np.frombuffer(buffer, dtype=np.uint8))


def decode_rgb_bytes(data: torch.Tensor, path: str) -> torch.Tensor:
    """uint8 (3, H, W) RGB image on the CPU from encoded bytes; grayscale and CMYK JPEGs are converted."""
    from torchvision.io import ImageReadMode, decode_image  # torchvision takes a second to import: when decoding

    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise unreadable(path, exc) from None


def check_complete(raw: bytes, path: str) -> None:
    """Raise the CPU decoder's DataError for a file cut short.

    nvJPEG decodes a truncated JPEG without an error where the CPU decoder refuses it. A file
    that ends in the EOI marker is whole; the rare one that does not (cut short, or with bytes
    after its end, or not a JPEG) is decoded here on the CPU to tell.
    """
    if not raw.endswith(JPEG_END):
        with quiet_decoders():
            decode_rgb_bytes(as_uint8(bytearray(raw)), path)


def crop_resize(image: torch.Tensor, box: Box | None, size: int) -> torch.Tensor:
    """uint8 (3, size, size): the `box` of the image, or with None all of it, antialiased bilinear."""
    from torchvision.transforms.v2 import functional as TF

    if box is None:
        return TF.resize(image, [size, size], antialias=True)
    return TF.resized_crop(image, *box, [size, size], antialias=True)


class EncodedBatch:
    """One batch of encoded images with their crop boxes, decoded by `to(device)`.

    The files' bytes travel from the worker as one tensor, so a batch costs one shared-memory
    segment rather than one per image. A box of None resizes the whole image (test). After `to`,
    `kept` lists the batch rows that decoded (all of them unless `skip_unreadable` dropped some),
    which is what the targets must be indexed with: see `batch_to_device`.
    """

    def __init__(
        self,
        encoded: Sequence[bytes],
        paths: Sequence[str],
        boxes: Sequence[Box | None],
        image_size: int,
        skip_unreadable: bool = False,
    ):
        if not len(encoded) == len(paths) == len(boxes):
            raise ValueError(f"{len(paths)} paths but {len(encoded)} encodings and {len(boxes)} boxes")
        self.data = as_uint8(bytearray().join(encoded))
        self.lengths = [len(e) for e in encoded]
        self.paths = list(paths)
        self.boxes = list(boxes)
        self.image_size = int(image_size)
        self.skip_unreadable = bool(skip_unreadable)
        self.kept: list[int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def pin_memory(self) -> EncodedBatch:
        """Left as is: the decoder reads host bytes, so pinning them would be a copy for nothing."""
        return self

    def to(self, device: torch.device | str, non_blocking: bool = False) -> torch.Tensor:
        """uint8 (len(kept), 3, S, S) on `device`; `non_blocking` is accepted for the loop's sake."""
        device = torch.device(device)
        decoded = self._decode(device)
        self.kept = [i for i, image in enumerate(decoded) if image is not None]
        images = [crop_resize(decoded[i], self.boxes[i], self.image_size) for i in self.kept]
        if not images:
            return torch.zeros((0, 3, self.image_size, self.image_size), dtype=torch.uint8, device=device)
        return torch.stack(images)

    def _decode(self, device: torch.device) -> list[torch.Tensor | None]:
        """All images in one decoder call; when that fails, one at a time to find the bad ones."""
        from torchvision.io import ImageReadMode, decode_jpeg

        encoded = list(torch.split(self.data, self.lengths))
        if not encoded:
            return []
        with quiet_decoders():
            try:
                return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
            except RuntimeError:
                return [self._decode_one(data, path, device) for data, path in zip(encoded, self.paths)]

    def _decode_one(self, data: torch.Tensor, path: str, device: torch.device) -> torch.Tensor | None:
        """One image on `device`. What the device's decoder refuses (a non-JPEG file, say) goes to
        the CPU path's decoder; None when that fails too and skipping is on."""
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            pass
        try:
            return decode_rgb_bytes(data, path).to(device)
        except DataError as exc:
            skip_or_raise(exc, self.skip_unreadable)
            return None


def batch_to_device(
    images: torch.Tensor | EncodedBatch, targets: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader batch on `device`. An EncodedBatch is decoded there, and its targets keep the rows
    of the images that decoded."""
    if isinstance(images, EncodedBatch):
        decoded = images.to(device)
        if len(images.kept) < len(targets):
            targets = targets[images.kept]
        return decoded, targets.to(device, non_blocking=True)
    return images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
