{{/* The chart's name, and the full name of its objects (release-name-tracer). */}}
{{- define "tracer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tracer.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The labels every object carries (app.kubernetes.io/*). */}}
{{- define "tracer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tracer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/part-of: tracer
{{- end }}

{{/* The labels that select the DaemonSet's pods (never change them on upgrade). */}}
{{- define "tracer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tracer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* tracefs is mounted (writable) when kprobe mode may be used (probe auto or kprobe), or the
daemon counts the state changes the kernel never hands to its probes (never-run-count, on by
default): both write there. */}}
{{- define "tracer.needsTracefs" -}}
{{- $probe := default "auto" (index .Values.config "probe") }}
{{- $neverRun := default "on" (index .Values.config "never-run-count") }}
{{- if or (eq $probe "auto") (eq $probe "kprobe") (ne $neverRun "off") }}true{{ end }}
{{- end }}

{{/* Where /metrics listens: the pod's IP, or the node's loopback with hostOnly. */}}
{{- define "tracer.metricsAddr" -}}
{{- if .Values.metrics.hostOnly }}127.0.0.1:{{ .Values.metrics.port }}{{ else }}0.0.0.0:{{ .Values.metrics.port }}{{ end }}
{{- end }}

{{/* Whether anything scrapes the pods through the cluster network. */}}
{{- define "tracer.servesPodMetrics" -}}
{{- if not .Values.metrics.hostOnly }}true{{ end }}
{{- end }}

{{/*
Relabelings shared by ServiceMonitor and PodMonitor: the target labels node, namespace and pod
name tracer's own pod (the metrics' own k8s_namespace and k8s_pod name the workloads).
*/}}
{{- define "tracer.relabelings" -}}
- sourceLabels: [__meta_kubernetes_pod_node_name]
  targetLabel: node
- sourceLabels: [__meta_kubernetes_namespace]
  targetLabel: namespace
- sourceLabels: [__meta_kubernetes_pod_name]
  targetLabel: pod
{{- end }}
