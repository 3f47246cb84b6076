{{/*
Names are fixed (maestro-control-plane, maestro-data-plane, ...), not prefixed with the release:
certificates, the data planes' --control-plane target, the analyses' URLs and the lane's
NetworkPolicy name them. One release per namespace.
*/}}

{{/* The labels of a component, in the manifests' flow style: {{ include "maestro.labels" "data-plane" }} */}}
{{- define "maestro.labels" -}}
{app.kubernetes.io/name: maestro, app.kubernetes.io/component: {{ . }}}
{{- end }}

{{/*
An image reference, refused under global.requirePinnedImages unless it carries a digest or a
tag other than `latest`: {{ include "maestro.image" (list . .Values.images.maestro "images.maestro") }}
*/}}
{{- define "maestro.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $key := index . 2 -}}
{{- if $root.Values.global.requirePinnedImages -}}
{{- $name := regexReplaceAll "^.*/" (regexReplaceAll "@.*$" $image "") "" -}}
{{- $digest := regexMatch "@sha256:[0-9a-f]{64}$" $image -}}
{{- $tagged := and (contains ":" $name) (not (hasSuffix ":latest" $name)) -}}
{{- if not (or $digest $tagged) -}}
{{- fail (printf "global.requirePinnedImages: %s (%s) is pinned neither by digest nor by a tag other than latest" $key $image) -}}
{{- end -}}
{{- end -}}
{{- $image -}}
{{- end }}

{{/* The names a Service answers to inside the cluster, for a certificate's dnsNames. */}}
{{- define "maestro.dnsNames" -}}
- {{ .name }}
- {{ .name }}.{{ .namespace }}.svc
- {{ .name }}.{{ .namespace }}.svc.cluster.local
{{- end }}

{{/*
A cert-manager Certificate for a component's Service, into the Secret `<name>-tls`, valid for
server and client auth: {{ include "maestro.certificate" (dict "root" . "name" "maestro-data-plane" "component" "data-plane") }}
*/}}
{{- define "maestro.certificate" -}}
{{- $tls := .root.Values.tls -}}
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ .name }}
  labels: {{ include "maestro.labels" .component }}
spec:
  secretName: {{ .name }}-tls
  issuerRef: {name: {{ $tls.issuer.name }}, kind: {{ $tls.issuer.kind }}}
  privateKey: {algorithm: ECDSA, size: 256, rotationPolicy: Always}
  duration: {{ $tls.duration }}
  renewBefore: {{ $tls.renewBefore }}
  usages: [digital signature, key encipherment, server auth, client auth]
  dnsNames:
    {{- include "maestro.dnsNames" (dict "name" .name "namespace" .root.Release.Namespace) | nindent 4 }}
{{- end }}

{{/* A PodDisruptionBudget for a component: {{ include "maestro.pdb" (dict "name" "maestro-data-plane" "component" "data-plane" "pdb" .Values.dataPlane.pdb) }} */}}
{{- define "maestro.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  labels: {{ include "maestro.labels" .component }}
spec:
  minAvailable: {{ .pdb.minAvailable }}
  selector:
    matchLabels: {{ include "maestro.labels" .component }}
{{- end }}

{{/* The control plane's maestro.yaml (its ConfigMap; a checksum of it rolls the pods). */}}
{{- define "maestro.controlPlane.config" -}}
server:
  host: 0.0.0.0
  port: 50051
  grace_period_s: 20
  tls:
    cert_file: /etc/maestro/tls/tls.crt
    key_file: /etc/maestro/tls/tls.key
    client_ca_file: /etc/maestro/tls/ca.crt
auth: {mode: api_key}
store: {backend: postgres, postgres_dsn: set-from-the-secret, postgres_pool_size: {{ .Values.controlPlane.postgres.poolSize }}}
telemetry:
  service_name: maestro-control-plane
  otlp_endpoint: {{ .Values.telemetry.otlpEndpoint | quote }}  # "" keeps OTLP off
  metrics_port: 9464
  metrics_host: 0.0.0.0  # allowed only with the client certificate check below
  metrics_tls:
    cert_file: /etc/maestro/tls/tls.crt
    key_file: /etc/maestro/tls/tls.key
    client_ca_file: /etc/maestro/tls/ca.crt
logging: {level: {{ .Values.controlPlane.logLevel }}, format: json}
routing:
  project: {{ .Values.controlPlane.routing.project }}
  config_file: /etc/maestro/router/litellm.yaml
  policy_files: [/etc/maestro/router/routing.rego]
  watch: true
data_plane: {http_host: 0.0.0.0, http_port: 8080}  # TLS too: server.tls covers it
graph: {blob_dir: /var/lib/maestro/blobs}
{{- end }}

{{/* `maestro data-plane`: the data planes' and the agent executors' container. */}}
{{- define "maestro.dataPlane.args" -}}
- data-plane
- --control-plane=maestro-control-plane:50051
- --control-plane-ca=/etc/maestro/tls/ca.crt
- --control-plane-cert=/etc/maestro/tls/tls.crt
- --control-plane-key=/etc/maestro/tls/tls.key
- --port=50061
- --http-port=8081
{{- end }}

{{- define "maestro.dataPlane.env" -}}
- name: MAESTRO_SERVER__HOST
  value: 0.0.0.0
- name: MAESTRO_DATA_PLANE__HTTP_HOST
  value: 0.0.0.0
- name: MAESTRO_SERVER__TLS__CERT_FILE  # gRPC and the HTTP ingress
  value: /etc/maestro/tls/tls.crt
- name: MAESTRO_SERVER__TLS__KEY_FILE
  value: /etc/maestro/tls/tls.key
- name: MAESTRO_DATA_PLANE__NODE_ID
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: MAESTRO_API_KEY
  valueFrom: {secretKeyRef: {name: {{ .Values.dataPlane.apiKeySecret.name }}, key: {{ .Values.dataPlane.apiKeySecret.key }}}}
- name: MAESTRO_TELEMETRY__OTLP_ENDPOINT
  value: {{ .Values.telemetry.otlpEndpoint | quote }}
- name: OTEL_EXPORTER_OTLP_CERTIFICATE  # checks the collector's certificate
  value: /etc/maestro/tls/ca.crt
- name: MAESTRO_TELEMETRY__OTLP_METRICS
  value: {{ if and .Values.telemetry.otlpEndpoint .Values.telemetry.dataPlaneOtlpMetrics }}"true"{{ else }}"false"{{ end }}
{{- end }}

{{- define "maestro.dataPlane.probes" -}}
readinessProbe:
  httpGet: {path: /readyz, port: http, scheme: HTTPS}
  periodSeconds: 2
  timeoutSeconds: 2
livenessProbe:
  httpGet: {path: /healthz, port: http, scheme: HTTPS}
  periodSeconds: 10
  timeoutSeconds: 3
{{- end }}

{{/* A map of strings in flow style: {a: b, c: d} */}}
{{- define "maestro.flowMap" -}}
{{- $items := list -}}
{{- range $key, $value := . -}}
{{- $items = append $items (printf "%s: %s" $key $value) -}}
{{- end -}}
{ {{- join ", " $items -}} }
{{- end }}
