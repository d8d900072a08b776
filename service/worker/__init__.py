"""The GPU worker: loads the models, consumes jobs from the queue, reports its health.

One process per GPU. ``runner.Worker`` is the loop (receive, decode, tiled inference with
progress and cancellation, encode, store, ack), ``models`` loads and warms up the model
repository, ``faults`` tells unrecoverable engine failures from bad input, ``health``
serves the worker's own /metrics and health port.
"""
