{{/* Names and labels. */}}
{{- define "medstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "medstream.fullname" -}}
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

{{/* "<fullname>-<component>"; call with (dict "root" $ "component" "deterioration"). */}}
{{- define "medstream.componentName" -}}
{{- printf "%s-%s" (include "medstream.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "medstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "medstream.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "medstream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "medstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: medstream
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Chart-wide labels (no component), for ServiceMonitors, rules and the dashboard. */}}
{{- define "medstream.chartLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "medstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: medstream
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A service's values: serviceDefaults overlaid with services.<name>. */}}
{{- define "medstream.serviceValues" -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.serviceDefaults) (deepCopy .svc)) }}
{{- end }}

{{- define "medstream.image" -}}
{{- $registry := .image.registry | default "" }}
{{- $ref := printf "%s:%s" .repository (.image.tag | default .root.Chart.AppVersion) }}
{{- if $registry }}{{ printf "%s/%s" $registry $ref }}{{ else }}{{ $ref }}{{ end }}
{{- end }}

{{- define "medstream.tritonGrpcUrl" -}}
{{- if .Values.triton.enabled }}
{{- printf "%s:8001" (include "medstream.componentName" (dict "root" . "component" "triton")) }}
{{- else }}
{{- required "triton.externalGrpcUrl is required when triton.enabled is false" .Values.triton.externalGrpcUrl }}
{{- end }}
{{- end }}

{{- define "medstream.kafkaSasl" -}}
{{- hasPrefix "SASL" .Values.kafka.securityProtocol }}
{{- end }}

{{- define "medstream.kafkaTls" -}}
{{- has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}
{{- end }}

{{- define "medstream.kafkaTlsDir" -}}/etc/medstream/kafka-tls{{- end }}

{{/*
Non-secret MEDSTREAM_* settings of one service (services/common/config.py), as a ConfigMap's data.
Call with (dict "root" $ "name" "deterioration" "s" <merged service values>).
*/}}
{{- define "medstream.serviceConfig" -}}
{{- $v := .root.Values }}
{{- $uses := .s.uses | default list -}}
MEDSTREAM_HTTP_HOST: "0.0.0.0"
MEDSTREAM_HTTP_PORT: {{ .s.httpPort | quote }}
MEDSTREAM_STATE_DIR: /var/lib/medstream
MEDSTREAM_LOG_LEVEL: {{ $v.logLevel | quote }}
{{- if has "kafka" $uses }}
{{- $protocol := $v.kafka.securityProtocol }}
{{- if not (has $protocol (list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL")) }}
{{- fail (printf "kafka.securityProtocol %q is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL" $protocol) }}
{{- end }}
MEDSTREAM_KAFKA_BOOTSTRAP_SERVERS: {{ required "kafka.bootstrapServers is required" $v.kafka.bootstrapServers | quote }}
MEDSTREAM_KAFKA_SECURITY_PROTOCOL: {{ $protocol | quote }}
MEDSTREAM_KAFKA_TOPIC_PARTITIONS: {{ $v.kafka.topicPartitions | quote }}
MEDSTREAM_KAFKA_REPLICATION_FACTOR: {{ $v.kafka.replicationFactor | quote }}
MEDSTREAM_KAFKA_SESSION_TIMEOUT_MS: {{ $v.kafka.sessionTimeoutMs | quote }}
{{- if eq (include "medstream.kafkaSasl" .root) "true" }}
MEDSTREAM_KAFKA_SASL_MECHANISM: {{ $v.kafka.sasl.mechanism | quote }}
{{- if not $v.kafka.sasl.usernameKey }}
MEDSTREAM_KAFKA_SASL_USERNAME: {{ required "kafka.sasl.username (or kafka.sasl.usernameKey) is required with SASL" $v.kafka.sasl.username | quote }}
{{- end }}
{{- end }}
{{- if eq (include "medstream.kafkaTls" .root) "true" }}
{{- if $v.kafka.tls.caSecret }}
MEDSTREAM_KAFKA_SSL_CAFILE: {{ printf "%s/ca.crt" (include "medstream.kafkaTlsDir" .root) }}
{{- end }}
{{- if $v.kafka.tls.clientSecret }}
MEDSTREAM_KAFKA_SSL_CERTFILE: {{ printf "%s/client.crt" (include "medstream.kafkaTlsDir" .root) }}
MEDSTREAM_KAFKA_SSL_KEYFILE: {{ printf "%s/client.key" (include "medstream.kafkaTlsDir" .root) }}
{{- end }}
{{- end }}
{{- end }}
{{- if has "triton" $uses }}
MEDSTREAM_TRITON_GRPC_URL: {{ include "medstream.tritonGrpcUrl" .root | quote }}
{{- end }}
{{- if has "neo4j" $uses }}
MEDSTREAM_NEO4J_URI: {{ required "neo4j.uri is required" $v.neo4j.uri | quote }}
MEDSTREAM_NEO4J_USER: {{ $v.neo4j.user | quote }}
MEDSTREAM_NEO4J_DATABASE: {{ $v.neo4j.database | quote }}
{{- end }}
{{- if .s.blobStore }}
{{- $blobs := $v.blobStore }}
{{- if not (has $blobs.type (list "local" "s3")) }}
{{- fail (printf "blobStore.type %q is not one of local, s3" $blobs.type) }}
{{- end }}
MEDSTREAM_BLOB_STORE: {{ $blobs.type | quote }}
{{- if eq $blobs.type "s3" }}
MEDSTREAM_S3_BUCKET: {{ required "blobStore.bucket is required with blobStore.type s3" $blobs.bucket | quote }}
MEDSTREAM_S3_PREFIX: {{ $blobs.prefix | quote }}
MEDSTREAM_S3_REGION: {{ $v.objectStorage.region | quote }}
{{- with $v.objectStorage.endpoint }}
MEDSTREAM_S3_ENDPOINT_URL: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- with .s.grpc }}
{{ .env }}: {{ .port | quote }}
{{- end }}
{{- with .s.dimse }}
{{ .env }}: {{ .port | quote }}
{{- end }}
{{- range $i, $f := .s.files }}
{{ $f.env }}: {{ printf "/etc/medstream/files/%d/%s" $i $f.key | quote }}
{{- end }}
{{- if .s.dispatch }}
MEDSTREAM_DISPATCH_DESTINATIONS: {{ include "medstream.dispatchDestinations" . | quote }}
{{- if not (has .s.dispatch.start (list "latest" "earliest")) }}
{{- fail (printf "services.%s.dispatch.start %q is not one of latest, earliest" .name .s.dispatch.start) }}
{{- end }}
MEDSTREAM_DISPATCH_START: {{ .s.dispatch.start | quote }}
{{- end }}
{{- range $key, $value := .s.env }}
{{- if not (hasPrefix "MEDSTREAM_" $key) }}
{{- fail (printf "services env %q: only MEDSTREAM_* settings are read by the services" $key) }}
{{- end }}
{{- if regexMatch "(PASSWORD|SECRET_ACCESS_KEY|TOKEN)$" $key }}
{{- fail (printf "services env %q is a credential: the chart takes it from an existing Secret, never a ConfigMap (values.yaml names the Secret)" $key) }}
{{- end }}
{{ $key }}: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* Settings that come from existing Secrets, as container env entries. */}}
{{- define "medstream.serviceSecretEnv" -}}
{{- $v := .root.Values }}
{{- $uses := .s.uses | default list }}
{{- if and (has "kafka" $uses) (eq (include "medstream.kafkaSasl" .root) "true") }}
{{- $secret := required "kafka.sasl.existingSecret is required with SASL" $v.kafka.sasl.existingSecret }}
{{- if $v.kafka.sasl.usernameKey }}
- name: MEDSTREAM_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ $secret | quote }}, key: {{ $v.kafka.sasl.usernameKey | quote }}}
{{- end }}
- name: MEDSTREAM_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $secret | quote }}, key: {{ $v.kafka.sasl.passwordKey | quote }}}
{{- end }}
{{- if and .s.blobStore (eq $v.blobStore.type "s3") $v.objectStorage.existingSecret }}
- name: MEDSTREAM_S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ $v.objectStorage.existingSecret | quote }}, key: {{ $v.objectStorage.accessKeyIdKey | quote }}}
- name: MEDSTREAM_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ $v.objectStorage.existingSecret | quote }}, key: {{ $v.objectStorage.secretAccessKeyKey | quote }}}
{{- end }}
{{- if and (has "neo4j" $uses) $v.neo4j.existingSecret }}
- name: MEDSTREAM_NEO4J_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $v.neo4j.existingSecret | quote }}, key: {{ $v.neo4j.passwordKey | quote }}}
{{- end }}
{{- with .s.dispatch }}
{{- with .stowToken }}
{{- if .existingSecret }}
- name: MEDSTREAM_DISPATCH_STOW_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ .existingSecret | quote }}, key: {{ required "dispatch.stowToken.key is required with an existingSecret" .key | quote }}}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
An imaging dispatcher's destinations (services.<name>.dispatch.destinations) as the JSON list of "name=url" that
MEDSTREAM_DISPATCH_DESTINATIONS takes; refuses bad names, duplicates, unknown schemes and an empty list.
Call with (dict "root" $ "name" "imaging-dispatcher" "s" <merged service values>).
*/}}
{{- define "medstream.dispatchDestinations" -}}
{{- $svc := .name }}
{{- $entries := list }}
{{- $names := list }}
{{- range $i, $d := .s.dispatch.destinations }}
{{- $name := toString ($d.name | default "") }}
{{- if not (regexMatch "^[a-z0-9][a-z0-9-]{0,39}$" $name) }}
{{- fail (printf "services.%s.dispatch.destinations[%d].name %q: use up to 40 lower-case letters, digits and '-', starting with a letter or digit (it names the consumer group)" $svc $i $name) }}
{{- end }}
{{- if has $name $names }}
{{- fail (printf "services.%s.dispatch.destinations: the name %q is used twice" $svc $name) }}
{{- end }}
{{- $names = append $names $name }}
{{- $url := toString ($d.url | default "") }}
{{- if not (or (regexMatch "^dicom://[^@/:]{1,16}@[^/]+:[0-9]+$" $url) (regexMatch "^https?://[^/]+" $url)) }}
{{- fail (printf "services.%s.dispatch.destinations[%d].url %q is neither dicom://CALLED_AE@host:port (an AE title of at most 16 characters) nor http(s)://host[:port]/path" $svc $i $url) }}
{{- end }}
{{- $entries = append $entries (printf "%s=%s" $name $url) }}
{{- end }}
{{- if not $entries }}
{{- fail (printf "services.%s.dispatch.destinations: at least one destination is required when the service is enabled" $svc) }}
{{- end }}
{{- toJson $entries }}
{{- end }}

{{/* The TCP port a destination URL reaches: its explicit port, else 443 for https and 80 for http. */}}
{{- define "medstream.destinationPort" -}}
{{- $u := urlParse . }}
{{- $port := regexFind ":[0-9]+$" $u.host | trimPrefix ":" }}
{{- if $port }}{{ $port }}{{ else if eq $u.scheme "https" }}443{{ else if eq $u.scheme "http" }}80{{ end }}
{{- end }}

{{/*
A service's consumer groups: <consumerGroup>-<destination name> for each destination of a dispatcher, else its
consumerGroup alone (none without one), as a JSON list. Call with (dict "s" <merged service values>).
*/}}
{{- define "medstream.consumerGroups" -}}
{{- $s := .s }}
{{- $groups := list }}
{{- if and $s.consumerGroup $s.dispatch }}
{{- range $s.dispatch.destinations }}
{{- $groups = append $groups (printf "%s-%s" $s.consumerGroup .name) }}
{{- end }}
{{- else if $s.consumerGroup }}
{{- $groups = list $s.consumerGroup }}
{{- end }}
{{- toJson $groups }}
{{- end }}

{{/* True when a service mounts Kafka TLS material. */}}
{{- define "medstream.kafkaTlsMounted" -}}
{{- $v := .root.Values }}
{{- if and (has "kafka" (.s.uses | default list)) (eq (include "medstream.kafkaTls" .root) "true") }}
{{- if or $v.kafka.tls.caSecret $v.kafka.tls.clientSecret }}true{{ end }}
{{- end }}
{{- end }}

{{/* The DNS egress rule every pod needs. */}}
{{- define "medstream.dnsEgress" -}}
- to:
    - namespaceSelector: {{- toYaml .Values.networkPolicy.dns.namespaceSelector | nindent 8 }}
      podSelector: {{- toYaml .Values.networkPolicy.dns.podSelector | nindent 8 }}
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end }}

{{/* The Prometheus peer allowed to scrape. */}}
{{- define "medstream.prometheusPeer" -}}
- namespaceSelector: {{- toYaml .Values.networkPolicy.prometheus.namespaceSelector | nindent 4 }}
  podSelector: {{- toYaml .Values.networkPolicy.prometheus.podSelector | nindent 4 }}
{{- end }}

{{/* KEDA's sasl mode for the configured mechanism. */}}
{{- define "medstream.kedaSasl" -}}
{{- $m := .Values.kafka.sasl.mechanism }}
{{- if eq $m "PLAIN" }}plaintext{{ else if eq $m "SCRAM-SHA-256" }}scram_sha256{{ else }}scram_sha512{{ end }}
{{- end }}
