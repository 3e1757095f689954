"""The Flower side of fedlab: the only package that imports flwr.

- Message-API adapters that move messages and convert records: ``server`` (the ``ServerApp``
  around :func:`~fedlab.algorithms.runs.run_configured`), ``client`` (the ``ClientApp``),
  ``records``, ``exchange``, ``secure_transport`` (SecAgg+ stages over the Grid) and
  ``secure_client`` (SecAgg+ stages in the ClientApp).
- ``simulation``: a federation on Flower's simulation engine (Ray).
- ``edge``: the client of a real device, with its own privacy budget file.
- ``deploy``: certificates, the federation file, and the SuperLink and SuperNode processes.
"""
