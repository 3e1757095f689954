"""The error every deployment step raises when it cannot start or is refused."""

from __future__ import annotations

from fedlab.core.errors import FedlabError


class DeploymentError(FedlabError):
    """A deployment cannot start or was refused (one line, non-zero exit)."""
