"""llmaz-serverless: KEDA-driven scale to zero for llmaz Playgrounds and Services.

The package is laid out by responsibility:

- ``constants``   -- the public API: label and annotation names, KEDA object naming.
- ``policy``      -- the cluster policy model (defaults, GPU defaults, profiles), loaded from a ConfigMap.
- ``accelerators``-- does this workload ask for GPUs/accelerators?
- ``triggers``    -- the trigger presets (http, queue-depth, message queues, cron, raw).
- ``settings``    -- annotations + policy -> resolved scaling settings.
- ``durations``   -- the one duration parser (annotations, trigger parameters, policy).
- ``spelling``    -- misspelt annotation keys and prefixes (warned, or denied by policy).
- ``readiness``   -- is the HTTP readiness timeout longer than the model's expected load?
- ``mutation``    -- the admission mutation rules (pure: object in, object out).
- ``validation``  -- the admission validation rules (pure).
- ``keda``        -- desired KEDA objects (ScaledObject, InterceptorRoute) for a workload (pure).
- ``review``      -- AdmissionReview boundary types and the error taxonomy.
- ``server``      -- the aiohttp HTTPS server (mutate, validate, health, metrics).
- ``reconciler``  -- keeps the KEDA objects of managed workloads in shape.
- ``preview``     -- the offline "what would the webhook do" command.
"""

__version__ = "0.1.0"
