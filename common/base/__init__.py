"""Base: what every layer may use, importing nothing of the core: errors, crash-safe files, the launch dir."""
