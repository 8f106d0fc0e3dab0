"""Synthetic faces (SPEC §8): a miniature MS1M for training and miniature LFW / CPLFW protocols.

An *identity* is a vector of genes in [0, 1] (face shape, skin, eyes, brows, nose, mouth, ears,
hair, facial hair, skin texture, spectacles) plus the seed of its freckle and mole pattern. A
*nuisance* is everything that changes between two photos of the same person: pose (yaw, pitch,
roll), scale and position, expression, gaze, illumination (direction, strength, colour cast,
gamma), occlusion (sunglasses, mask, cap, hand, object), background and clothes, blur, low
resolution, noise and JPEG quality.

Rendering treats the head as a stack of horizontal cross-sections (circles whose radius follows
the face outline, pushed forward below the cheekbones so the jaw and chin protrude). Features are
points on that surface (plus a protrusion for the nose and lips), rotated by yaw and pitch and
then by roll, scale and shift, so turning the head shifts and foreshortens the features towards
one side and shows more of the other cheek. Drawing happens at 2x and is box-downsampled; the
result is a ``size`` x ``size`` RGB image, stored as JPEG.

Data set (``generate_synthetic``; its seed and size: :class:`otface.config.SynthSection`, the
config's ``data.synthetic``): ``train.rec``/``train.idx``/``property`` in insightface layout
with ``num_identities`` x ``images_per_identity`` images at the "train" level, and two
verification sets on identities disjoint from the training ones (their own seed streams):

- ``synth_easy.bin`` (like LFW): mild nuisance, negatives are two unrelated identities;
- ``synth_hard.bin`` (like CPLFW): large pose with the two images of every pair turned to
  opposite sides, occlusion, harsh light, blur, low resolution and heavy JPEG; negatives pair
  two unrelated identities as in "easy", so the extra difficulty lies in the photos alone.

Pairs alternate genuine / impostor, so every one of 10 contiguous folds is balanced. Every image
is a pure function of (seed, split, identity or pair, image index): the output is byte-identical
for any number of worker processes.

Modules: ``identities`` (genes, nuisances, their sampling at each level), ``geometry`` (the
face's shape), ``painter`` (drawing one photo), ``photometrics`` (light, blur, noise),
``render`` (one image), ``writer`` (the data set's identities and pairs, files, cache, previews).
"""

from otface.synth.identities import GENES, LEVELS, Identity, Nuisance, sample_identity, sample_nuisance
from otface.synth.render import render_face
from otface.synth.writer import (
    FORMAT_VERSION,
    IMAGE_SIZE,
    generate_synthetic,
    protocol_pair,
    train_identity,
    train_nuisance,
    write_preview,
)

__all__ = [
    "FORMAT_VERSION", "GENES", "IMAGE_SIZE", "LEVELS", "Identity", "Nuisance", "generate_synthetic", "protocol_pair",
    "render_face", "sample_identity", "sample_nuisance", "train_identity", "train_nuisance", "write_preview",
]
