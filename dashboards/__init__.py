"""Grafana dashboards, Prometheus rules and Alertmanager configs of liqwatch (`python -m dashboards.build`)."""
