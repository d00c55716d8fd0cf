"""The core: the only part of ``bench`` that algorithms, tasks and reports may import.

- ``batch``: ``RolloutBatch`` and ``PolicyOutput`` (what a loss sees) and group helpers;
- ``generation``: ``Generation``, the ``Sampler`` and ``Source`` protocols, tokenisation helpers;
- ``rewards``: the reward-function type and ``score``;
- ``registry``, ``errors``, ``paths``: string registries, user errors, where output goes.

The core imports nothing from the engine (rollout, loop, tracking, ...), the application
(``bench.app``) or the plug-in packages; ``tests/test_layers.py`` checks it.
"""
