"""The Flower side of fedlab: the only package that imports flwr.

For a Flower app of your own:

- :class:`FedlabDpFedAvg` (``dp_strategy``): fedlab's user-level DP-FedAvg around any Flower
  Message-API strategy (``FedAvg``, ``FedAdam``, ...), with PLD accounting, the budget guard and
  the privacy ledger.
- :class:`FlowerAccountant` (``privacy_accountant``): fedlab's PLD, PRV or RDP accountant as
  Flower's ``PrivacyAccountant``, for Flower's own DP strategies.
- ClientApp mods (``client_privacy``): :func:`clipping_mod` (client-side clipping for
  :class:`FedlabDpFedAvg`) and :class:`DeviceBudgetMod` (the device's own budget file decides
  whether a train reply leaves); :func:`private_training` (fedlab's DP-SGD on your model, optimizer
  and data loader in ``@app.train``, its accountant history kept in the context state).
- SecAgg+: :class:`SecAggMod` (``secagg_mod``) answers fedlab's SecAgg+ stages in any ClientApp and
  trains through the app's own ``@app.train``; :class:`SecAggWorkflow` (``secagg_workflow``) runs
  secure FedAvg rounds from a ServerApp's ``main``.

fedlab's own apps:

- Message-API adapters that move messages and convert records: ``server`` (the ``ServerApp``
  around :func:`~fedlab.algorithms.runs.run_configured`, whose central-DP rounds run through the
  same :class:`~fedlab.algorithms.dp_fedavg.DpFedAvgServer` as :class:`FedlabDpFedAvg`), ``client``
  (the ``ClientApp``; it clips with the same ``clip_update`` as :func:`clipping_mod`),
  ``records``, ``exchange``, ``secure_transport`` (SecAgg+ stages over the Grid) and
  ``secure_client`` (SecAgg+ stages in the ClientApp); ``run_end`` (telling the nodes that the
  run ended); ``node_app`` (the ClientApp of ``flwr run``: devices and simulation partitions).
- ``simulation``: a federation on Flower's simulation engine (Ray).
- ``edge``: the client of a real device, with its own privacy budget file.
- ``deploy``: certificates, the federation file, and the SuperLink and SuperNode processes.
"""

from fedlab.flower.client_privacy import DeviceBudgetMod, clipping_mod, private_training
from fedlab.flower.dp_strategy import FedlabDpFedAvg
from fedlab.flower.privacy_accountant import FlowerAccountant
from fedlab.flower.secagg_mod import SecAggMod
from fedlab.flower.secagg_workflow import SecAggResult, SecAggWorkflow

__all__ = [
    "DeviceBudgetMod",
    "FedlabDpFedAvg",
    "FlowerAccountant",
    "SecAggMod",
    "SecAggResult",
    "SecAggWorkflow",
    "clipping_mod",
    "private_training",
]
