"""Zoos of trained networks: local generators, published-zoo loaders, datasets of parameter graphs."""
