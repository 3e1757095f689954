"""``python -m fedlab.flower.deploy supernode --heartbeat-interval S ...``: see :func:`supernode_main`."""

import sys

from fedlab.flower.deploy.supernode import supernode_main

if __name__ == "__main__":
    sys.exit(supernode_main(sys.argv[1:]))
