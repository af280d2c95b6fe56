"""Service faults: kill a service (it stays down) and start it again; health probes."""
