"""Training set over an insightface RecordIO folder (``train.rec``, ``train.idx``, ``property``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from otface.data.formats.recordio import RecordHeader, RecordIOError, RecordReader, read_property, unpack_record
from otface.data.transforms import decode_image, to_chw


class RecordDataset(Dataset):
    """Face images and identity labels of an insightface training folder.

    With an insightface record 0 (flag > 0) the images are the keys ``range(1, label[0])``;
    without one, every key of the index is an image. Items are ``(image, label)``: a uint8
    (3, H, W) RGB tensor (:func:`transforms.network_input` makes a batch of them network inputs;
    the trainer flips them, :func:`transforms.flip_draws`), and an int.

    ``validate_labels`` reads every record header at construction (no image is decoded) and
    checks each label lies in [0, num_classes); without it the check happens per item and when
    ``labels`` is first read. ``skip_unreadable`` (implies ``validate_labels``) drops the records
    whose header or label cannot be read -- a truncated ``.rec``, a damaged record -- instead of
    raising, image and label together, and lists them in ``skipped`` as (key, message).
    """

    def __init__(self, root: str | os.PathLike, validate_labels: bool = True, skip_unreadable: bool = False) -> None:
        self.root = Path(root)
        self.num_classes, self.height, self.width = read_property(self.root)
        self.reader = RecordReader(self.root / "train.rec", self.root / "train.idx", check_offsets=not skip_unreadable)
        if 0 in self.reader and self.reader.read_header(0).flag > 0:
            end = int(self.reader.read_header(0).label[0])
            self.keys = np.arange(1, end, dtype=np.int64)
            missing = [int(k) for k in self.keys if k not in self.reader]
            if missing:
                raise RecordIOError(
                    f"{self.reader.idx_path}: record 0 announces images 1..{end - 1} but key {missing[0]} "
                    f"is not in the index ({len(missing)} missing)"
                )
        else:
            self.keys = np.asarray(self.reader.keys, dtype=np.int64)
        self._labels: np.ndarray | None = None
        self.skipped: list[tuple[int, str]] = []
        if skip_unreadable:
            self._drop_unreadable()
        elif validate_labels:
            _ = self.labels

    def _drop_unreadable(self) -> None:
        keys, labels = [], []
        for key in self.keys.tolist():
            try:
                labels.append(self._label(key, self.reader.read_header(key)))
            except RecordIOError as exc:
                self.skipped.append((key, str(exc)))
                continue
            keys.append(key)
        self.keys = np.asarray(keys, dtype=np.int64)
        self._labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def _label(self, key: int, header: RecordHeader) -> int:
        """The label of image record ``key``, checked; and its header's id, which insightface's
        writers set to the key (0: not recorded), must name it -- else the index points ``key``
        at another image's record."""
        if header.id not in (0, key):
            raise RecordIOError(
                f"{self.reader.rec_path}: record {key} at offset {self.reader.offset(key)} holds the image of key "
                f"{header.id} (its header's id): {self.reader.idx_path} points key {key} at another record"
            )
        value = float(header.label if header.flag == 0 else header.label[0])
        if not 0 <= value < self.num_classes:
            raise RecordIOError(
                f"{self.reader.rec_path}: record {key}: label {value:g} outside [0, {self.num_classes}) "
                f"(num_classes from {self.root / 'property'})"
            )
        if value != int(value):
            raise RecordIOError(f"{self.reader.rec_path}: record {key}: label {value:g} is not an integer")
        return int(value)

    @property
    def labels(self) -> np.ndarray:
        """int64 (N,) label of every image, from the record headers, validated once."""
        if self._labels is None:
            keys = (int(k) for k in self.keys)
            labels = (self._label(k, self.reader.read_header(k)) for k in keys)
            self._labels = np.fromiter(labels, dtype=np.int64, count=len(self.keys))
        return self._labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        key = int(self.keys[index])
        payload = self.reader.read(key)
        try:
            header, data = unpack_record(payload)
        except RecordIOError as exc:
            raise RecordIOError(f"{self.reader.rec_path}: record {key}: {exc}") from None
        label = self._label(key, header)
        try:
            image = decode_image(data)
        except ValueError as exc:
            raise RecordIOError(f"{self.reader.rec_path}: record {key}: {exc}") from None
        if image.shape[:2] != (self.height, self.width):
            raise RecordIOError(
                f"{self.reader.rec_path}: record {key}: image is {image.shape[1]}x{image.shape[0]}, "
                f"property says {self.width}x{self.height}"
            )
        return to_chw(image), label

