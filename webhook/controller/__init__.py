"""The reconciler, in parts a reader finds by name.

- ``informer``   list + watch into local caches
- ``workqueue``  de-duplicating queue with per-key backoff
- ``events``     the Event recorder
- ``metrics``    the reconciler's Prometheus metrics
- ``objects``    pure rules over workloads, KEDA objects and HPAs
- ``reconciler`` the controller: handlers, workers, ``reconcile`` and ``run_controller``
"""
