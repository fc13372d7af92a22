"""Local tooling on top of the monitor: the stack (Kafka, Prometheus, Alertmanager), the demo, the webhook
receiver, benchmarks, produce and dump, and the dashboards builder."""
