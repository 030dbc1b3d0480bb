{{/*
Cross-field rules that values.schema.json cannot express. Each message says how to fix it.
*/}}
{{- define "creditstream.validateValues" -}}
{{- $messages := list -}}
{{- $v := .Values -}}
{{- if and (not $v.rabbitmq.enabled) (not $v.externalBroker.existingSecret) (or (not $v.externalBroker.amqpUrl) (not $v.externalBroker.managementUrl)) -}}
{{- $messages = append $messages "rabbitmq.enabled=false needs a broker: set externalBroker.existingSecret (keys amqp-url, management-url) or both externalBroker.amqpUrl and externalBroker.managementUrl." -}}
{{- end -}}
{{- if and $v.rabbitmq.enabled (or $v.externalBroker.existingSecret $v.externalBroker.amqpUrl) -}}
{{- $messages = append $messages "externalBroker.* is set while rabbitmq.enabled=true: set rabbitmq.enabled=false to use the external broker, or clear externalBroker." -}}
{{- end -}}
{{- if and $v.rabbitmq.enabled (eq $v.rabbitmq.auth.username "guest") -}}
{{- $messages = append $messages "rabbitmq.auth.username=guest: RabbitMQ only lets guest log in from localhost; choose another user name." -}}
{{- end -}}
{{- if and $v.rabbitmq.enabled (not (hasSuffix "-management" $v.rabbitmq.image.tag)) (not (contains "-management-" $v.rabbitmq.image.tag)) -}}
{{- $messages = append $messages (printf "rabbitmq.image.tag=%s: use a -management tag; KEDA's http protocol and the management-url need the management API." $v.rabbitmq.image.tag) -}}
{{- end -}}
{{- if and $v.postgresql.enabled (or $v.externalDatabase.existingSecret $v.externalDatabase.url) -}}
{{- $messages = append $messages "externalDatabase.* is set while postgresql.enabled=true: set postgresql.enabled=false to use the external database, or clear externalDatabase." -}}
{{- end -}}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicaCount) (int $v.autoscaling.maxReplicaCount)) -}}
{{- $messages = append $messages (printf "autoscaling.minReplicaCount=%v exceeds maxReplicaCount=%v: raise maxReplicaCount or lower minReplicaCount." $v.autoscaling.minReplicaCount $v.autoscaling.maxReplicaCount) -}}
{{- end -}}
{{- if and $v.autoscaling.enabled (ne $v.autoscaling.protocol "http") (ne $v.autoscaling.protocol "amqp") -}}
{{- $messages = append $messages "autoscaling.protocol must be http (counts unacked messages) or amqp." -}}
{{- end -}}
{{- $batchWorstS := add (int $v.consumer.worstBatchSeconds) (div (int $v.consumer.batchTimeoutMs) 1000) 5 -}}
{{- if le (int $v.consumer.terminationGracePeriodSeconds) (int $batchWorstS) -}}
{{- $messages = append $messages (printf "consumer.terminationGracePeriodSeconds=%v must exceed the worst batch time (worstBatchSeconds + batchTimeoutMs + 5 s drain = %v s): raise it, or the pod is killed mid-batch." $v.consumer.terminationGracePeriodSeconds $batchWorstS) -}}
{{- end -}}
{{- $managed := splitList " " (include "creditstream.managedEnv" .) -}}
{{- range $component := list "consumer" "producer" -}}
{{- range (index $v $component).extraEnv -}}
{{- if has .name $managed -}}
{{- $messages = append $messages (printf "%s.extraEnv sets %s, which the chart manages: use the matching value instead (e.g. consumer.queueName feeds both the consumer and the KEDA trigger)." $component .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $v.producer.enabled (eq $v.producer.source "pvc") (not $v.producer.pvc.claimName) -}}
{{- $messages = append $messages "producer.source=pvc needs producer.pvc.claimName (a PVC holding the data set)." -}}
{{- end -}}
{{- if $messages -}}
{{- fail (printf "\n\nVALUES VALIDATION:\n  - %s" (join "\n  - " $messages)) -}}
{{- end -}}
{{- end -}}
