"""Federated learning algorithms on updates (numpy only: no torch, no flwr)."""
