"""liqwatch: a streaming liquidation monitor.

Data flows down this list; imports point the other way (checked by the import-linter contract in pyproject.toml):

    events, config   what comes in (decoded, validated) and how it is read (one validated config)
    kernels          numba kernels over contiguous arrays: index, mark, health, cascade
    sinks            where results go: Kafka topics, Prometheus metrics, signed webhooks
    core             the event-time core: layout, ingest doors, market and account state, engine, monitor
    risk             what the core's numbers mean: alerts, stress cascades, limits
    worker, replay   the two drivers of the core: the live Faust worker and the post-mortem replay
    scenarios        synthetic worlds (the October evening, calm, ...)
    tools            local tooling: the stack, the demo, the webhook receiver, benchmarks, produce/dump
    cli              the `liqwatch` command
"""

__version__ = "0.1.0"
