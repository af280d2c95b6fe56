"""The HTTP services of the system under test, each run as ``python -m stack.services.<name>``.

See docs/architecture.md (the contract) and docs/configuration.md (every setting).
"""
