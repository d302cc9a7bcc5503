"""The compute core that runs inside a device worker process: snapshot resolution,
model loading, the continuous-batching engine and its sampler.

Not for: the process wrapper, IPC framing or supervision (those live elsewhere). This
`__init__` imports nothing, so `neuron.worker.snapshot` and `neuron.worker.errors` stay
usable from the torch-free parent; import the torch-using modules explicitly.
"""
