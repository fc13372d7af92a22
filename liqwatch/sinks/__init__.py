"""Where results leave liqwatch: Kafka topics (names, creation, the output sink), Prometheus metrics and signed
webhooks."""
