"""Names that form the public API of llmaz-serverless (see docs/api.md)."""

from __future__ import annotations

DOMAIN = "serverless.llmaz.io"
PREFIX = DOMAIN + "/"

# Namespace label that opts a namespace in. The webhook configurations select on it.
NAMESPACE_LABEL = PREFIX + "enabled"

# Per-object annotations (user facing).
ANN_ENABLED = PREFIX + "enabled"                  # "false" opts a single object out
ANN_PROFILE = PREFIX + "profile"
ANN_MIN_REPLICAS = PREFIX + "min-replicas"
ANN_MAX_REPLICAS = PREFIX + "max-replicas"
ANN_COOLDOWN = PREFIX + "cooldown-period"
ANN_KEEP_ALIVE = PREFIX + "keep-alive"                    # "fixed" (the cooldown) or "learned"
ANN_COLD_START_OBJECTIVE = PREFIX + "cold-start-objective"  # "1%": share of requests a learner may let wait
ANN_STARTUP_TIME = PREFIX + "startup-time"                # zero -> ready; a learned pre-warm starts this early
ANN_POLLING = PREFIX + "polling-interval"
ANN_INITIAL_COOLDOWN = PREFIX + "initial-cooldown-period"
ANN_START_AT_ZERO = PREFIX + "start-at-zero"
ANN_TRIGGERS = PREFIX + "triggers"
ANN_BEHAVIOR = PREFIX + "scale-behavior"
ANN_DRAIN_TIMEOUT = PREFIX + "drain-timeout"          # seconds a removed replica gets to finish its work
ANN_MAX_REQUEST = PREFIX + "max-request-duration"     # the longest request the workload declares

USER_ANNOTATIONS = (
    ANN_ENABLED, ANN_PROFILE, ANN_MIN_REPLICAS, ANN_MAX_REPLICAS, ANN_COOLDOWN, ANN_POLLING,
    ANN_INITIAL_COOLDOWN, ANN_START_AT_ZERO, ANN_TRIGGERS, ANN_BEHAVIOR,
    ANN_KEEP_ALIVE, ANN_COLD_START_OBJECTIVE, ANN_STARTUP_TIME,
    ANN_DRAIN_TIMEOUT, ANN_MAX_REQUEST,
)

# Annotations written by the webhook (status-like; users should not edit them).
ANN_MANAGED = PREFIX + "managed"
ANN_RESOLVED = PREFIX + "resolved"
ANN_LEARNED = PREFIX + "learned"                  # keep-alive: learned: what the reconciler decided, as a line
WRITTEN_ANNOTATIONS = (ANN_MANAGED, ANN_RESOLVED, ANN_LEARNED)
# On our ScaledObject (written by the reconciler): the learner's state, compact JSON (webhook.learn.state).
ANN_LEARNED_STATE = PREFIX + "learned-state"

# Labels on the KEDA objects we own.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "llmaz-serverless"
LABEL_WORKLOAD_KIND = PREFIX + "workload-kind"
LABEL_WORKLOAD_NAME = PREFIX + "workload-name"

FIELD_MANAGER = "llmaz-serverless"

# llmaz
LLMAZ_GROUP = "inference.llmaz.io"
LLMAZ_VERSION = "v1alpha1"
LLMAZ_API_VERSION = LLMAZ_GROUP + "/" + LLMAZ_VERSION
MODEL_GROUP = "llmaz.io"
MODEL_API_VERSION = MODEL_GROUP + "/v1alpha1"
KIND_PLAYGROUND = "Playground"
KIND_SERVICE = "Service"
WORKLOAD_KINDS = (KIND_PLAYGROUND, KIND_SERVICE)
PLURALS = {KIND_PLAYGROUND: "playgrounds", KIND_SERVICE: "services"}
LLMAZ_LB_SUFFIX = "-lb"
LLMAZ_LB_PORT = 8080

# KEDA
KEDA_API_VERSION = "keda.sh/v1alpha1"
HTTP_API_VERSION = "http.keda.sh/v1beta1"
KEDA_HPA_PREFIX = "keda-hpa-"
DNS_LABEL_MAX = 63
# KEDA derives "keda-hpa-<scaledobject>" and both must be valid DNS labels.
MAX_WORKLOAD_NAME = DNS_LABEL_MAX - len(KEDA_HPA_PREFIX)


def scaled_object_name(workload_name: str) -> str:
    """The ScaledObject of a workload carries the workload's name."""
    return workload_name


def interceptor_route_name(workload_name: str) -> str:
    return workload_name


def lb_service_name(workload_name: str) -> str:
    return workload_name + LLMAZ_LB_SUFFIX
