"""Scaling simulator and policy recommender: replay a request trace against the KEDA objects this project
creates, before anything is deployed.

Layers, from pure to I/O: ``model`` (the KEDA / HPA / HTTP add-on rules as a deterministic event loop) and
``result`` (its figures), ``gpus`` (accelerators per replica as llmaz would schedule them), ``replay`` (where a
replay starts, what is scored, where it ends), ``baselines`` and ``recommend`` (configurations to compare and
the sweep), ``traces`` (readers that turn files into arrivals), ``report`` (tables and JSON), ``cli`` (the
``simulate`` and ``recommend`` subcommands).
"""
