"""Faults: how a run stops on its own terms: stop signals, a stalled rank, divergence, the exit."""
