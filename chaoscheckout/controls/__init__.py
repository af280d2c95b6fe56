"""Chaos Toolkit controls of this package (the safety net; the load control is in ``load``)."""
