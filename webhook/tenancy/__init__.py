"""What one tenant may write, and how much of it: the bounded-input rules and the tenant boundary.

Everything a tenant writes in a ``serverless.llmaz.io/*`` annotation is untrusted input that our
ServiceAccount turns into KEDA objects, which the KEDA operator then acts on with its own network position
and credentials. This package holds the two halves of keeping that safe, both pure and shared by the
webhook, the reconciler and ``check`` so the same rules apply everywhere:

- ``safeyaml`` and ``limits``: every annotation is parsed with a loader that refuses anchors and aliases and
  counts nodes and depth, under caps on bytes, trigger count and built-object size (policy ``limits``).
- ``boundary``: which trigger types, ClusterTriggerAuthentications, addresses, cloud identities and HTTP
  hosts a namespace may reference (policy ``tenancy``), with defaults an admin widens.

The package ``__init__`` imports nothing, so ``webhook.triggers`` can use the loader while ``boundary``
uses the presets without an import cycle.
"""
