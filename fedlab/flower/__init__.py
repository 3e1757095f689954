"""The Flower side of fedlab: the only package (with fedlab.sim's Flower runner) that imports flwr.

- Message-API adapters that move messages and convert records: ``server`` (the ``ServerApp``
  around :func:`~fedlab.algorithms.runs.run_configured`), ``client`` (the ``ClientApp``),
  ``records``, ``exchange``, ``secure_transport`` and ``stages`` (SecAgg+ over the Grid).
- ``edge``: the client of a real device, with its own privacy budget file.
- ``deploy``: certificates, the federation file, and the SuperLink and SuperNode processes.
"""
