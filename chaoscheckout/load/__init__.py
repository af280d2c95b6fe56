"""Baseline load: the k6 process lifecycle and the Chaos Toolkit control that runs it."""
