"""Option strings that both the config and the functions taking them accept, each defined once."""

GRAD_MODES = ("envelope", "unrolled")  # the Sinkhorn gradient (otface.ot.sinkhorn)
REDUCTIONS = ("sum", "mean")  # the OT loss over the hard groups (otface.losses.ot_loss)
ON_ERROR = ("raise", "skip")  # an unreadable training sample (otface.data.skipping)
