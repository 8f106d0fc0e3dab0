"""The inverse of ``otface data pack`` / ``otface data pairs``: look at what a data set holds.

- :func:`unpack_records`: an insightface RecordIO folder -> ``dst/<identity>/<key>.<ext>``, the
  identity named by ``classes.txt`` when the folder has one (``otface data pack`` writes it),
  else by its label (``%06d``). The stored image bytes are written unchanged.
- :func:`unpack_bin`: a verification ``.bin`` -> ``dst/images/<pair>_<a|b>.<ext>`` and the pair
  list ``dst/pairs.txt`` (``path1 path2 1|0`` per pair, the format ``otface data pairs`` reads).
"""

from __future__ import annotations

import os
from pathlib import Path

from otface.data.formats.binset import read_bin
from otface.data.formats.record_dataset import RecordDataset
from otface.data.formats.recordio import unpack_record
from otface.data.tools.pack import CLASSES_FILE, read_classes
from otface.errors import DataError
from otface.progress import progress_bar


def _extension(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return "bin"


def unpack_records(src: str | os.PathLike, dst: str | os.PathLike, progress: bool = True) -> int:
    """Write every image of the RecordIO folder ``src`` into ``dst/<identity>/``; return the count."""
    dataset = RecordDataset(src)
    classes_file = Path(src) / CLASSES_FILE
    if classes_file.is_file():
        names = read_classes(classes_file)
        if len(names) != dataset.num_classes:
            raise DataError(f"{classes_file}: {len(names)} names for {dataset.num_classes} identities")
    else:
        names = [f"{label:06d}" for label in range(dataset.num_classes)]
    dst = Path(dst)
    for key, label in progress_bar(zip(dataset.keys.tolist(), dataset.labels.tolist()), total=len(dataset),
                                   desc="unpack", unit="img", enabled=progress):
        _, image = unpack_record(dataset.reader.read(key))
        path = dst / names[label] / f"{key:08d}.{_extension(image)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image)
    return len(dataset)


def unpack_bin(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Write the pairs of the ``.bin`` ``src`` as images and ``dst/pairs.txt``; return the pairs."""
    images, issame = read_bin(src)
    dst = Path(dst)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for pair, same in enumerate(issame.tolist()):
        names = []
        for side, data in zip("ab", images[2 * pair : 2 * pair + 2]):
            name = f"images/{pair:06d}_{side}.{_extension(data)}"
            (dst / name).write_bytes(data)
            names.append(name)
        lines.append(f"{names[0]} {names[1]} {int(same)}\n")
    (dst / "pairs.txt").write_text("".join(lines))
    return len(issame)
