"""A Flower app of a user's own (PyTorch MLP on digits) with fedlab's privacy added."""
