"""Docker images and helpers for running the checkout stack as containers."""
