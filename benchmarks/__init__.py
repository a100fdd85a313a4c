"""Benchmarks of agentgym, behind ``agentgym bench ...`` (installed as ``agentgym.benchmarks``).

Library modules hold no benchmark code; each benchmark is one module here:

* :mod:`~agentgym.benchmarks.envs` - ``agentgym bench envs``: env-pool throughput against a
  sequential loop in the same run;
* :mod:`~agentgym.benchmarks.memory` - ``agentgym bench memory``: memory per env of the process and
  Ray backends;
* :mod:`~agentgym.benchmarks.rollout` - ``agentgym bench rollout``: rollout throughput of each
  policy backend on the same episodes;
* :mod:`~agentgym.benchmarks.update` - ``agentgym bench update``: PPO update tokens/s against the
  previous update's batching in the same run;
* :mod:`~agentgym.benchmarks.algos` - ``agentgym bench algos``: the credit-assignment methods
  compared under one budget (its tables and plots: :mod:`~agentgym.benchmarks.algos_report`);
* :mod:`~agentgym.benchmarks.gpu` - ``agentgym bench gpu``: training and generation throughput of
  a real-shaped model on a GPU (MFU).

``agentgym bench credit`` (estimator timing) and ``agentgym bench sandbox`` live with the code
they time (``trainers/credit_cli.py``, ``sandboxes/cli.py``).
"""
