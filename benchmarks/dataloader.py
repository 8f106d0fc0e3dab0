"""Training-data throughput: images/second read, decoded and augmented from RecordIO.

    python benchmarks/dataloader.py [--root DIR] [--workers 0 1 2 4] [--batch 256] [--batches 40]

Three measurements on one machine, in one run:

1. JPEG decoding alone, one process: ``transforms.decode_image`` through its fast path
   (simplejpeg, libjpeg-turbo) against Pillow, on the first 2000 records;
2. the training loader: ``RecordDataset`` (read, decode, random flip; uint8 items) behind a
   ``torch.utils.data.DataLoader`` with the ``PKBatchSampler`` of training, for each worker count;
3. the same followed by ``transforms.network_input`` on each batch in the main process (what the
   trainer does on its device; on a GPU machine that step leaves the CPU), at the full size and at
   ``--input-size`` (the default CPU run resizes 112 -> 56 px).

``--root`` is an insightface RecordIO folder (``train.rec``, ``train.idx``, ``property``); by
default the built-in synthetic training set (200 identities x 50 images, 112x112 JPEG) is used,
generated into the cache if needed. Images/second counts delivered images after two warm-up
batches. The figures print as a markdown table.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from otface.config import SynthSection
from otface.data import transforms
from otface.data.formats.record_dataset import RecordDataset
from otface.data.formats.recordio import unpack_record
from otface.data.samplers import PKBatchSampler
from otface.data.transforms import network_input
from otface.train.data import synth_cache_dir


def default_root() -> Path:
    from otface.synth import generate_synthetic

    section = SynthSection()
    return Path(generate_synthetic(synth_cache_dir(section), section, progress=True)["root"])


def decode_rate(dataset: RecordDataset, count: int = 2000) -> dict[str, float]:
    """Images/s of decoding ``count`` records' JPEG bytes with the fast path and with Pillow."""
    blobs = [unpack_record(dataset.reader.read(int(k)))[1] for k in dataset.keys[:count]]

    def pillow(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))

    rates = {}
    for name, decode in (("decode_image", transforms.decode_image), ("Pillow", pillow)):
        start = time.perf_counter()
        for data in blobs:
            decode(data)
        rates[name] = len(blobs) / (time.perf_counter() - start)
    rates["bytes_per_image"] = float(np.mean([len(b) for b in blobs]))
    return rates


def loader_rate(root: Path, workers: int, batch: int, batches: int, input_size: int | None) -> float:
    """Delivered images/s of the training DataLoader with ``workers`` processes, followed by
    ``network_input`` at side ``input_size`` in this process when given."""
    dataset = RecordDataset(root)
    sampler = PKBatchSampler(dataset.labels, batch, 4, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                         prefetch_factor=4 if workers else None, persistent_workers=False)
    it = iter(loader)
    for _ in range(2):  # warm-up: worker start-up and the first batches
        next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        images, _ = next(it)
        if input_size:
            network_input(images, input_size)
        n += images.shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="RecordIO folder (default: the synthetic training set)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per worker count")
    parser.add_argument("--input-size", type=int, default=56, help="the resized measurement's side")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    root = args.root or default_root()
    dataset = RecordDataset(root)
    print(f"{root}: {len(dataset)} images of {dataset.num_classes} identities, {dataset.width}x{dataset.height}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"simplejpeg {'yes' if transforms.simplejpeg is not None else 'no'}")
    rates = decode_rate(dataset)
    print(f"\ndecode only, 1 process ({rates['bytes_per_image']:.0f} bytes/image): "
          f"decode_image {rates['decode_image']:.0f} img/s, Pillow {rates['Pillow']:.0f} img/s "
          f"({rates['decode_image'] / rates['Pillow']:.2f}x)\n")
    print(f"| workers | uint8 batches (img/s) | + network_input {dataset.height} px | "
          f"+ network_input {args.input_size} px |")
    print("|---:|---:|---:|---:|")
    for workers in args.workers:
        rates = [loader_rate(root, workers, args.batch, args.batches, size)
                 for size in (None, dataset.height, args.input_size)]
        print(f"| {workers} | " + " | ".join(f"{r:.0f}" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
