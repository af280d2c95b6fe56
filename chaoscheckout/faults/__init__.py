"""Fault bookkeeping shared by every fault domain: leases, reverts and the reaper."""
