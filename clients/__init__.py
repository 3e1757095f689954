"""Client entry points (Flower ClientApp for `flwr run .`)."""
