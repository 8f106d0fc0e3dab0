"""Option strings and defaults that both the config and the functions taking them use, each defined once."""

GRAD_MODES = ("envelope", "unrolled")  # the Sinkhorn gradient (otface.ot.sinkhorn)
REDUCTIONS = ("sum", "mean")  # the OT loss over the hard groups (otface.losses.ot_loss)
ON_ERROR = ("raise", "skip")  # an unreadable training sample (otface.data.skipping)

# The OT loss's Sinkhorn schedule (otface.ot.schedule), chosen by measurement on trained-model maps
# (benchmarks/RESULTS.md): over-relaxation, the value's relative error, the most iterations per problem
OT_OMEGA = 1.6
OT_TOL = 1e-3
OT_MAX_ITERS = 500
