"""The admin HTTP listener: Prometheus metrics, health and status of the running service."""
