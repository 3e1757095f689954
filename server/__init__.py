"""Server entry points (Flower ServerApp for `flwr run .`)."""
