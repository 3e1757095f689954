"""fedlab: privacy-preserving federated learning on Flower and Opacus.

The layers (top imports bottom, never the reverse) are described in the
project's DESIGN.md: ``core``/``data`` at the bottom, then ``privacy``/``secagg``,
then ``algorithms``/``training``, then ``flower``/``sim``, then ``cli``.
"""

__version__ = "0.1.0"
