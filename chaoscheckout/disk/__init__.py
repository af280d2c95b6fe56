"""Disk faults: fill a service's data filesystem with a ballast file, then delete it."""
