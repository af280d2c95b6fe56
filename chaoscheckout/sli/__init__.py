"""SLI probes (Prometheus) and the money-safety probe."""
