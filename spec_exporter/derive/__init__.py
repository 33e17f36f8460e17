"""Pure derivations: snapshots and deltas in, numbers out. No clock, no I/O, no logging here."""
