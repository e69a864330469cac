"""Development and CI support: nothing here is on the path a GPU user's ``import verl`` takes.

- :mod:`credit_plugin.dev.cpu`: a verl platform for machines without an accelerator, with its engine
  registrations and CPU mends, and the worker-group harness the CPU tests and ``bench/run.py`` share;
  imported by ``import credit_plugin`` only where ``VERL_PLATFORM=cpu`` selects it.
- :mod:`credit_plugin.dev.rollout`: the ``hf_cpu`` rollout (generation with ``transformers``); verl's registries
  know it by name (``credit_plugin.registration``) and import it when ``rollout.name=hf_cpu`` selects it.
- :mod:`credit_plugin.dev.tiny`: the demo task and model (``python -m credit_plugin.dev.tiny OUT_DIR``); the demo
  recipe scores the task through verl's ``custom_reward_function``.

A test (``tests/test_import_layout.py``) checks that ``import verl`` without these settings loads no module of
this package.
"""
