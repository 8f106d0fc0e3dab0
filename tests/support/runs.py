"""The tiny training run of the trainer tests: seconds on one core."""

TINY = [
    "data.synthetic.num_identities=12",
    "data.synthetic.images_per_identity=6",
    "data.synthetic.num_pairs=40",
    "data.synthetic.workers=1",
    "data.num_workers=0",
    "model.backbone=iresnet18",
    "model.params={width: 0.125}",
    "model.input_size=32",
    "model.embedding_size=32",
    "ot.stage=layer2",
    "ot.iters=10",
    "optim.batch_size=16",
    "optim.lr=0.05",
    "train.progress=false",
    "train.log_interval=1",
    "train.threads=1",
]
