"""Tests run single-threaded: the small tensors of the numerical checks are slower with more
threads (thread start-up dominates), and a 2-core CI machine gains nothing from them."""

import torch

torch.set_num_threads(1)
