"""Data: which samples each rank sees (sharding, K-fold splits) and the shared datasets' readers."""
