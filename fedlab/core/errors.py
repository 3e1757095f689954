"""Errors that fedlab reports to a user as one line, never as a traceback."""

FAILED_RUN_LINE = "fedlab: run "
"""How the ServerApp's log line of a failed run begins (``fedlab: run failed: REASON``)."""


class FedlabError(Exception):
    """Base class of every error fedlab reports as a one-line message."""


class ConfigError(FedlabError):
    """A configuration file, key or value is invalid."""


class DataError(FedlabError):
    """A data set cannot be loaded or partitioned as configured."""


class LedgerError(FedlabError):
    """The privacy ledger is missing, unreadable or inconsistent."""
