{{/*
Fixed object names: the webhook's code refers to them, so they are not derived from the release.
*/}}
{{- define "llmaz-serverless.name" -}}llmaz-serverless{{- end -}}
{{- define "llmaz-serverless.serviceName" -}}llmaz-serverless-webhook{{- end -}}
{{- define "llmaz-serverless.webhookConfigName" -}}llmaz-serverless{{- end -}}
{{- define "llmaz-serverless.policyConfigMap" -}}llmaz-serverless-policy{{- end -}}
{{- define "llmaz-serverless.caSecret" -}}llmaz-serverless-ca{{- end -}}
{{- define "llmaz-serverless.leaseName" -}}llmaz-serverless-leader{{- end -}}
{{- define "llmaz-serverless.controllerName" -}}llmaz-serverless-controller{{- end -}}
{{/* cert-manager mode only */}}
{{- define "llmaz-serverless.servingCertificate" -}}llmaz-serverless-webhook{{- end -}}
{{- define "llmaz-serverless.servingSecret" -}}llmaz-serverless-webhook-tls{{- end -}}

{{- define "llmaz-serverless.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llmaz-serverless.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmaz-serverless.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Pods of one component: "webhook" (serves admission; with controller.separate=false it reconciles too) or
"controller" (the reconciler, controller.separate=true). Call with (dict "root" $ "component" "webhook").
*/}}
{{- define "llmaz-serverless.componentSelectorLabels" -}}
{{ include "llmaz-serverless.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
resources, or with guaranteedResources=true the same with requests equal to limits (cpu and memory both
set in limits, taken from requests where the limit is absent): the Guaranteed QoS class, last to be evicted
under node memory pressure. Call with (dict "resources" ... "guaranteed" bool).
*/}}
{{- define "llmaz-serverless.resources" -}}
{{- $r := deepCopy (.resources | default dict) -}}
{{- if .guaranteed -}}
{{- $req := $r.requests | default dict -}}
{{- $lim := $r.limits | default dict -}}
{{- range $k := list "cpu" "memory" -}}
{{- if and (not (hasKey $lim $k)) (hasKey $req $k) -}}{{- $_ := set $lim $k (get $req $k) -}}{{- end -}}
{{- if not (hasKey $lim $k) -}}{{- fail (printf "guaranteedResources needs resources.limits.%s (or requests.%s)" $k $k) -}}{{- end -}}
{{- end -}}
{{- $_ := set $r "limits" $lim -}}
{{- $_ := set $r "requests" (deepCopy $lim) -}}
{{- end -}}
{{- toYaml $r -}}
{{- end -}}

{{- define "llmaz-serverless.labels" -}}
helm.sh/chart: {{ include "llmaz-serverless.chart" . }}
{{ include "llmaz-serverless.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llmaz-serverless
{{- end -}}

{{- define "llmaz-serverless.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "llmaz-serverless.certMode" -}}
{{- if .Values.certManager.enabled -}}files{{- else -}}self-managed{{- end -}}
{{- end -}}

{{/*
Settings shared by the mutating and the validating webhook.
*/}}
{{- define "llmaz-serverless.webhookCommon" -}}
{{- $fp := .Values.webhook.failurePolicy -}}
{{- if not (has $fp (list "Ignore" "Fail")) -}}
{{- fail (printf "webhook.failurePolicy must be Ignore or Fail, not %v" $fp) -}}
{{- end -}}
{{- $t := int .Values.webhook.timeoutSeconds -}}
{{- if or (lt $t 1) (gt $t 30) -}}
{{- fail (printf "webhook.timeoutSeconds must be within 1..30, not %v" .Values.webhook.timeoutSeconds) -}}
{{- end -}}
admissionReviewVersions: ["v1"]
sideEffects: None
timeoutSeconds: {{ $t }}
failurePolicy: {{ $fp }}
matchPolicy: Equivalent
rules:
  - apiGroups: ["inference.llmaz.io"]
    apiVersions: ["v1alpha1"]
    resources: ["playgrounds", "services"]
    operations: ["CREATE", "UPDATE"]
    scope: Namespaced
namespaceSelector:
  matchExpressions:
    - key: serverless.llmaz.io/enabled
      operator: In
      values: ["true"]
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values:
        {{- range (uniq (concat (list "kube-system" .Release.Namespace) .Values.webhook.excludedNamespaces)) }}
        - {{ . | quote }}
        {{- end }}
{{- end -}}

{{- define "llmaz-serverless.injectCAFrom" -}}
{{- printf "%s/%s" .Release.Namespace (include "llmaz-serverless.servingCertificate" .) -}}
{{- end -}}

{{/*
The chart's pods by component, as a YAML list of {component, rules}: which rule sets of rbac.yaml each
component's ServiceAccount is bound to. "certificates" only in self-managed mode (with cert-manager the
webhook reads its serving certificate from a mounted Secret and calls no API for it).
*/}}
{{- define "llmaz-serverless.components" -}}
{{- $certs := ternary (list) (list "certificates") .Values.certManager.enabled -}}
{{- if .Values.controller.separate -}}
{{- toYaml (list (dict "component" "webhook" "rules" (concat (list "caches") $certs))
                 (dict "component" "controller" "rules" (list "caches" "reconciler"))) -}}
{{- else -}}
{{- toYaml (list (dict "component" "webhook" "rules" (concat (list "caches") $certs (list "reconciler")))) -}}
{{- end -}}
{{- end -}}

{{/*
ServiceAccount (and ClusterRole, Role and bindings) of a component: "llmaz-serverless" for the webhook pods
(whatever their role), "llmaz-serverless-controller" for the separate reconciler.
Call with (dict "root" $ "component" "webhook").
*/}}
{{- define "llmaz-serverless.serviceAccountName" -}}
{{- ternary (include "llmaz-serverless.name" .root) (include "llmaz-serverless.controllerName" .root) (eq .component "webhook") -}}
{{- end -}}
