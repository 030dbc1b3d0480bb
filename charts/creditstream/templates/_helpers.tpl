{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "creditstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: release + chart unless the release already holds the chart name. */}}
{{- define "creditstream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "creditstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels; call with (dict "ctx" $ "component" "consumer"). */}}
{{- define "creditstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "creditstream.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Standard labels; call with (dict "ctx" $ "component" "consumer"). */}}
{{- define "creditstream.labels" -}}
helm.sh/chart: {{ include "creditstream.chart" .ctx }}
{{ include "creditstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: creditstream
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "creditstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "creditstream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image reference; call with (dict "ctx" $ "image" .Values.consumer.image). */}}
{{- define "creditstream.image" -}}
{{- $repo := .image.repository -}}
{{- with .ctx.Values.image.registry -}}{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo -}}{{- end -}}
{{- printf "%s:%s" $repo (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* Per-component override of the shared pod security context. */}}
{{- define "creditstream.podSecurityContext" -}}
{{- toYaml (default .ctx.Values.podSecurityContext .override) -}}
{{- end -}}

{{- define "creditstream.containerSecurityContext" -}}
{{- toYaml (default .ctx.Values.securityContext .override) -}}
{{- end -}}

{{- define "creditstream.resources" -}}
{{- toYaml (default .ctx.Values.resources .override) -}}
{{- end -}}

{{/* ---- broker ------------------------------------------------------------------------------ */}}
{{- define "creditstream.rabbitmq.fullname" -}}
{{- printf "%s-rabbitmq" (include "creditstream.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "creditstream.rabbitmq.headless" -}}
{{- printf "%s-headless" (include "creditstream.rabbitmq.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Secret holding amqp-url and management-url for the pods and KEDA. */}}
{{- define "creditstream.broker.secretName" -}}
{{- if .Values.rabbitmq.enabled -}}
{{- default (include "creditstream.rabbitmq.fullname" .) .Values.rabbitmq.auth.existingSecret -}}
{{- else -}}
{{- default (printf "%s-external-broker" (include "creditstream.fullname" .)) .Values.externalBroker.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "creditstream.broker.amqpUrlKey" -}}
{{- if .Values.rabbitmq.enabled -}}{{ .Values.rabbitmq.auth.secretKeys.amqpUrl }}{{- else -}}{{ .Values.externalBroker.secretKeys.amqpUrl }}{{- end -}}
{{- end -}}

{{- define "creditstream.broker.managementUrlKey" -}}
{{- if .Values.rabbitmq.enabled -}}{{ .Values.rabbitmq.auth.secretKeys.managementUrl }}{{- else -}}{{ .Values.externalBroker.secretKeys.managementUrl }}{{- end -}}
{{- end -}}

{{/*
Percent-encoding of one URL component (user, password, vhost). NOTE: `urlquery` is form
encoding (space -> "+"); URL parsers (pika, SQLAlchemy, Go's net/url in KEDA) read "+" in
userinfo and paths as a plus, so "+" from a space becomes "%20" ("+" itself is already "%2B").
*/}}
{{- define "creditstream.urlEscape" -}}
{{- . | urlquery | replace "+" "%20" -}}
{{- end -}}

{{/* The vhost as it appears in a URL path: "/" -> "" (default vhost), others percent-encoded. */}}
{{- define "creditstream.rabbitmq.vhostPath" -}}
{{- if eq .Values.rabbitmq.vhost "/" -}}{{- else -}}{{ include "creditstream.urlEscape" .Values.rabbitmq.vhost }}{{- end -}}
{{- end -}}

{{/* Broker password: explicit value, else the one already in the cluster, else a new one. */}}
{{- define "creditstream.rabbitmq.password" -}}
{{- if .Values.rabbitmq.auth.password -}}
{{- .Values.rabbitmq.auth.password -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "creditstream.rabbitmq.fullname" .) -}}
{{- if and $existing (index $existing.data .Values.rabbitmq.auth.secretKeys.password) -}}
{{- index $existing.data .Values.rabbitmq.auth.secretKeys.password | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* True ("true") when the broker runs as a cluster of several nodes. */}}
{{- define "creditstream.rabbitmq.clustered" -}}
{{- if gt (int .Values.rabbitmq.replicas) 1 -}}true{{- end -}}
{{- end -}}

{{/* The broker pods' own ServiceAccount: a cluster with peer-discovery RBAC only. */}}
{{- define "creditstream.rabbitmq.peerDiscoveryRbac" -}}
{{- if and (include "creditstream.rabbitmq.clustered" .) .Values.rabbitmq.peerDiscovery.rbac -}}true{{- end -}}
{{- end -}}

{{- define "creditstream.rabbitmq.serviceAccountName" -}}
{{- if include "creditstream.rabbitmq.peerDiscoveryRbac" . -}}
{{- include "creditstream.rabbitmq.fullname" . -}}
{{- else -}}
{{- include "creditstream.serviceAccountName" . -}}
{{- end -}}
{{- end -}}

{{/* Members of each quorum queue: quorumInitialGroupSize, else RabbitMQ's default
(quorum_cluster_size, 3), at most every node. */}}
{{- define "creditstream.rabbitmq.queueMembers" -}}
{{- min (int .Values.rabbitmq.replicas) (int (.Values.rabbitmq.quorumInitialGroupSize | default 3)) -}}
{{- end -}}

{{- define "creditstream.rabbitmq.cookieSecretName" -}}
{{- default (printf "%s-erlang-cookie" (include "creditstream.rabbitmq.fullname" .)) .Values.rabbitmq.erlangCookie.existingSecret -}}
{{- end -}}

{{/* The Erlang cookie: the one already in the cluster's Secret, else a new random one. */}}
{{- define "creditstream.rabbitmq.erlangCookie" -}}
{{- $key := .Values.rabbitmq.erlangCookie.secretKey -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "creditstream.rabbitmq.cookieSecretName" .) -}}
{{- if and $existing (index ($existing.data | default dict) $key) -}}
{{- index $existing.data $key | b64dec -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end -}}

{{/* Node FQDN suffix: pods named <statefulset>-N resolve through the headless Service. */}}
{{- define "creditstream.rabbitmq.nodeDomain" -}}
{{- printf "%s.%s.svc.%s" (include "creditstream.rabbitmq.headless" .) .Release.Namespace .Values.rabbitmq.clusterDomain -}}
{{- end -}}

{{/*
Bytes of a Kubernetes memory quantity, as apimachinery's resource.Quantity reads it: plain bytes
(1073741824), binary (Ki Mi Gi Ti Pi Ei), decimal (k M G T P E; `1E` is an exabyte) with an
optional fraction (1.5Gi), or an exponent (1e9, 1E9, a YAML number's 1e+09); "" when unparsable.
*/}}
{{- define "creditstream.quantityBytes" -}}
{{- $q := toString . -}}
{{- $factors := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 "Ei" 1152921504606846976 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 "E" 1000000000000000000 -}}
{{- $bytes := "" -}}
{{- if regexMatch "^[0-9]+$" $q -}}
{{- $bytes = $q -}}
{{- else if regexMatch "^[0-9]+([.][0-9]+)?[eE][+]?[0-9]+$" $q -}}
{{- $bytes = printf "%d" (int64 (floor (float64 $q))) -}}
{{- else -}}
{{- range $suffix, $factor := $factors -}}
{{- if regexMatch (printf "^[0-9]+([.][0-9]+)?%s$" $suffix) $q -}}
{{- $bytes = printf "%d" (int64 (floor (mulf (float64 (trimSuffix $suffix $q)) $factor))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $bytes -}}
{{- end -}}

{{/*
The broker's memory high watermark in bytes: rabbitmq.memoryHighWatermark x the container's
memory limit. NOTE: RabbitMQ advises an absolute watermark in containers: the Erlang VM reads the
host's memory, not the cgroup limit, so a relative one can sit above the limit (OOM kill).
*/}}
{{- define "creditstream.rabbitmq.watermarkBytes" -}}
{{- $limit := include "creditstream.quantityBytes" (dig "limits" "memory" "" .Values.rabbitmq.resources) -}}
{{- if $limit -}}
{{- printf "%d" (int64 (floor (mulf (float64 $limit) .Values.rabbitmq.memoryHighWatermark))) -}}
{{- end -}}
{{- end -}}

{{/*
The consumer's memory budget for deliveries in hand (CREDITSTREAM_MEMORY_BUDGET_BYTES):
consumer.memoryBudgetFraction x the consumer container's memory limit, in bytes ("" when the
limit is unset).
*/}}
{{- define "creditstream.consumer.memoryBudgetBytes" -}}
{{- $resources := default .Values.resources .Values.consumer.resources -}}
{{- $limit := include "creditstream.quantityBytes" (dig "limits" "memory" "" $resources) -}}
{{- if $limit -}}
{{- printf "%d" (int64 (floor (mulf (float64 $limit) .Values.consumer.memoryBudgetFraction))) -}}
{{- end -}}
{{- end -}}

{{/* ---- database ---------------------------------------------------------------------------- */}}
{{- define "creditstream.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "creditstream.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "creditstream.database.secretName" -}}
{{- if .Values.postgresql.enabled -}}
{{- default (include "creditstream.postgresql.fullname" .) .Values.postgresql.auth.existingSecret -}}
{{- else -}}
{{- default (printf "%s-database" (include "creditstream.fullname" .)) .Values.externalDatabase.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "creditstream.database.urlKey" -}}
{{- if .Values.postgresql.enabled -}}{{ .Values.postgresql.auth.secretKeys.databaseUrl }}{{- else if .Values.externalDatabase.existingSecret -}}{{ .Values.externalDatabase.existingSecretKey }}{{- else -}}database-url{{- end -}}
{{- end -}}

{{/* SQLite on a per-pod emptyDir when no database is configured (demo only). */}}
{{- define "creditstream.database.sqlite" -}}
{{- and (not .Values.postgresql.enabled) (not .Values.externalDatabase.existingSecret) (not .Values.externalDatabase.url) -}}
{{- end -}}

{{- define "creditstream.postgresql.password" -}}
{{- if .Values.postgresql.auth.password -}}
{{- .Values.postgresql.auth.password -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "creditstream.postgresql.fullname" .) -}}
{{- if and $existing (index $existing.data .Values.postgresql.auth.secretKeys.password) -}}
{{- index $existing.data .Values.postgresql.auth.secretKeys.password | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Checksums for the pod templates' `checksum/*` annotations: pods roll when what they read
changes. NOTE: they hash the values a Secret is made from, never a generated password: that one
is random on install and looked up on upgrade, so hashing the rendered Secret rolled the broker,
the database and the consumers on the first `helm upgrade`. A user-supplied password is hashed
(rotating it rolls the pods); an existingSecret is hashed by name and keys (its content is not
the chart's to see).
*/}}
{{- define "creditstream.broker.secretChecksum" -}}
{{- $v := .Values -}}
{{- $inputs := dict "existingSecret" $v.externalBroker.existingSecret "amqpUrl" $v.externalBroker.amqpUrl "managementUrl" $v.externalBroker.managementUrl "keys" $v.externalBroker.secretKeys -}}
{{- if $v.rabbitmq.enabled -}}
{{- $inputs = dict "auth" $v.rabbitmq.auth "vhost" $v.rabbitmq.vhost "host" (include "creditstream.rabbitmq.fullname" .) "namespace" .Release.Namespace -}}
{{- end -}}
{{- $inputs | toJson | sha256sum -}}
{{- end -}}

{{- define "creditstream.database.secretChecksum" -}}
{{- $v := .Values -}}
{{- $inputs := dict "existingSecret" $v.externalDatabase.existingSecret "key" $v.externalDatabase.existingSecretKey "url" $v.externalDatabase.url -}}
{{- if $v.postgresql.enabled -}}
{{- $inputs = dict "auth" $v.postgresql.auth "host" (include "creditstream.postgresql.fullname" .) "namespace" .Release.Namespace -}}
{{- end -}}
{{- $inputs | toJson | sha256sum -}}
{{- end -}}

{{/* Env vars the chart manages; extraEnv may not redefine them. */}}
{{- define "creditstream.managedEnv" -}}
CREDITSTREAM_AMQP_URL CREDITSTREAM_MANAGEMENT_URL CREDITSTREAM_DATABASE_URL CREDITSTREAM_REQUESTS_QUEUE CREDITSTREAM_MODEL_PATH CREDITSTREAM_HTTP_PORT CREDITSTREAM_BATCH_SIZE CREDITSTREAM_BATCH_TIMEOUT_MS CREDITSTREAM_PREFETCH CREDITSTREAM_MAX_BODY_BYTES CREDITSTREAM_MEMORY_BUDGET_BYTES CREDITSTREAM_RUN_ID CREDITSTREAM_BROKER_WAIT_S CREDITSTREAM_DATA_PATH CREDITSTREAM_DEAD_LETTER_MAX_BYTES CREDITSTREAM_DEAD_LETTER_MAX_MESSAGES CREDITSTREAM_MAX_DEAD_LETTERS_PER_MESSAGE CREDITSTREAM_DEAD_LETTER_EXCERPT_BYTES CREDITSTREAM_RESULTS_STREAM CREDITSTREAM_RESULTS_STREAM_MAX_BYTES CREDITSTREAM_RESULTS_STREAM_MAX_AGE CREDITSTREAM_RESULTS_STREAM_SEGMENT_BYTES CREDITSTREAM_STAGE_MODEL_PATH
{{- end -}}

{{/* Env shared by every creditstream container: broker URLs by secretKeyRef + settings ConfigMap. */}}
{{- define "creditstream.brokerEnv" -}}
- name: CREDITSTREAM_AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "creditstream.broker.secretName" . }}
      key: {{ include "creditstream.broker.amqpUrlKey" . }}
- name: CREDITSTREAM_MANAGEMENT_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "creditstream.broker.secretName" . }}
      key: {{ include "creditstream.broker.managementUrlKey" . }}
{{- end -}}

{{- define "creditstream.settingsEnvFrom" -}}
- configMapRef:
    name: {{ include "creditstream.fullname" . }}-settings
{{- end -}}

{{/* Writable scratch space for a read-only root filesystem. */}}
{{- define "creditstream.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{/*
checkov skips, each with its reason (the chart README's "checkov" table explains them all);
call with a list of keys of the dict below.
*/}}
{{- define "creditstream.checkovSkips" -}}
{{- $reasons := dict
  "CKV_K8S_15" "IfNotPresent: kind/minikube load images locally; tags are unique per build"
  "CKV_K8S_35" "Settings are read from env (pydantic-settings, upstream images); values come by secretKeyRef"
  "CKV_K8S_43" "Pinned tags; set image.tag to tag@sha256:digest to pin digests in a registry"
  "CKV_K8S_40" "Upstream image runs as its built-in uid 999 (owner of its data directory)"
  "CKV_K8S_8" "RabbitMQ: TCP readiness only, as its operator does; run-to-completion pods need no liveness"
  "CKV_K8S_9" "Run-to-completion pod: nothing routes traffic to it"
  "CKV_K8S_38" "Clustered RabbitMQ: peer discovery reads its headless Service's endpoints (Role: get endpoints)"
-}}
{{- range $i, $id := . }}
checkov.io/skip{{ add1 $i }}: {{ printf "%s=%s" $id (index $reasons $id) | quote }}
{{- end }}
{{- end -}}

{{/*
NetworkPolicy of a client pod (consumer, producer, smoke-test): egress only to DNS, the broker
and, for the consumer, the database; call with (dict "ctx" $ "component" "consumer").
*/}}
{{- define "creditstream.clientNetworkPolicy" -}}
{{- $v := .ctx.Values -}}
# {{ .component }}: egress only to DNS, the broker{{ if has .component (list "consumer" "relay") }} and the database{{ end }}.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "creditstream.fullname" .ctx }}-{{ .component }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "creditstream.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "creditstream.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 6 }}
  policyTypes: [Ingress, Egress]
  {{- if and (eq .component "consumer") $v.networkPolicy.metricsFrom }}
  ingress:
    - from:
        {{- toYaml $v.networkPolicy.metricsFrom | nindent 8 }}
      ports:
        - port: http
  {{- else }}
  # NOTE: nothing connects to these pods (kubelet probes are not subject to NetworkPolicy).
  ingress: []
  {{- end }}
  egress:
    - ports:
        - port: 53
          protocol: UDP
        - port: 53
          protocol: TCP
    {{- if $v.rabbitmq.enabled }}
    - to:
        - podSelector:
            matchLabels:
              {{- include "creditstream.selectorLabels" (dict "ctx" .ctx "component" "broker") | nindent 14 }}
      ports:
        - port: 5672
        - port: 15672
    {{- else }}
    - ports:
        - port: 5672
        - port: 5671
        - port: 15672
        - port: 443
      {{- with $v.externalBroker.egressCidr }}
      to:
        - ipBlock:
            cidr: {{ . }}
      {{- end }}
    {{- end }}
    {{- if has .component (list "consumer" "relay") }}
    {{- if $v.postgresql.enabled }}
    - to:
        - podSelector:
            matchLabels:
              {{- include "creditstream.selectorLabels" (dict "ctx" .ctx "component" "database") | nindent 14 }}
      ports:
        - port: 5432
    {{- else if or $v.externalDatabase.url $v.externalDatabase.existingSecret }}
    - ports:
        - port: 5432
      {{- with $v.externalDatabase.egressCidr }}
      to:
        - ipBlock:
            cidr: {{ . }}
      {{- end }}
    {{- end }}
    {{- end }}
    {{- if and (eq .component "producer") (eq $v.producer.source "url") }}
    - ports:
        - port: 443
        - port: 80
    {{- end }}
{{- end -}}

{{/*
The relay Deployment renders with relay.enabled and a shared database: with the default SQLite
store every consumer pod has its own file (and outbox) on an emptyDir no other pod can read.
*/}}
{{- define "creditstream.relay.enabled" -}}
{{- and .Values.relay.enabled (ne (include "creditstream.database.sqlite" .) "true") -}}
{{- end -}}

{{/*
The scoring workloads (issue 11), one Deployment + ScaledObject each, as a YAML list:
pipeline.mode=fused: the consumer on consumer.queueName; pipeline.mode=staged: one worker per
stage on its own queue (<pipeline.stagePrefix>.<stage>), plus the shadow score stage if enabled.
Each item: name (Deployment suffix), stage ("" for fused), args, queue.
*/}}
{{- define "creditstream.workers" -}}
{{- $p := .Values.pipeline -}}
{{- if eq $p.mode "staged" -}}
{{- range $stage := list "preprocess" "features" "score" }}
- name: {{ printf "stage-%s" $stage | quote }}
  stage: {{ $stage | quote }}
  args: [stage, {{ $stage }}]
  queue: {{ printf "%s.%s" $p.stagePrefix $stage | quote }}
{{- end }}
{{- if $p.shadow.enabled }}
- name: "stage-score-shadow"
  stage: "score-shadow"
  args: [stage, score, --shadow]
  modelPath: {{ $p.shadow.modelPath | quote }}
  queue: {{ printf "%s.score.shadow" $p.stagePrefix | quote }}
{{- end }}
{{- else }}
- name: "consumer"
  stage: ""
  args: [consume]
  queue: {{ .Values.consumer.queueName | quote }}
{{- end }}
{{- end -}}
