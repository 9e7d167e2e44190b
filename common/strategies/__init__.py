"""Strategies: training beyond plain data parallelism: pipeline stages, parameter servers, spread state."""
