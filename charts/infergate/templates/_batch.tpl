{{/*
Helpers of the Batch API: the settings the router and the batch workers
share (storage, limits), and the storage volume.
*/}}

{{/* infergate.batchName: the batch worker Deployment, its PVC and Secret. */}}
{{- define "infergate.batchName" -}}
{{- printf "%s-batch" (include "infergate.fullname" .) }}
{{- end }}

{{/* infergate.batchObjectStore: "true" when files live in object storage rather than a volume. */}}
{{- define "infergate.batchObjectStore" -}}
{{- if eq .Values.batch.storage.type "objectStore" }}true{{ end }}
{{- end }}

{{/* infergate.batchClaimName: the PersistentVolumeClaim holding the files. */}}
{{- define "infergate.batchClaimName" -}}
{{- .Values.batch.storage.pvc.existingClaim | default (include "infergate.batchName" .) }}
{{- end }}

{{/* infergate.batchCredentialsSecret: the secret with the object store's keys; empty: none (workload identity). */}}
{{- define "infergate.batchCredentialsSecret" -}}
{{- $store := .Values.batch.storage.objectStore }}
{{- if $store.credentialsSecret.name }}{{ $store.credentialsSecret.name }}
{{- else if $store.accessKeyId }}{{ include "infergate.batchName" . }}
{{- end }}
{{- end }}

{{/* infergate.batchEnv: INFERGATE_BATCH_* (and the object store's credentials) for the router and the batch workers. */}}
{{- define "infergate.batchEnv" -}}
{{- $store := .Values.batch.storage.objectStore }}
{{- if include "infergate.batchObjectStore" . }}
- name: INFERGATE_BATCH_STORAGE_URL
  value: {{ required "batch.storage.objectStore.url (s3://bucket/prefix) is required when batch.storage.type is objectStore" $store.url | quote }}
{{- $options := dict }}
{{- $client := dict }}
{{- with $store.endpointUrl }}{{ $_ := set $client "endpoint_url" . }}{{ end }}
{{- with $store.region }}{{ $_ := set $client "region_name" . }}{{ end }}
{{- if $client }}{{ $_ := set $options "client_kwargs" $client }}{{ end }}
- name: INFERGATE_BATCH_STORAGE_OPTIONS
  value: {{ toJson $options | quote }}
{{- with include "infergate.batchCredentialsSecret" . }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $store.credentialsSecret.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $store.credentialsSecret.secretAccessKeyKey }}
{{- end }}
{{- else }}
- name: INFERGATE_BATCH_STORAGE_URL
  value: {{ .Values.batch.storage.pvc.mountPath | quote }}
{{- end }}
{{- range $key, $value := .Values.batch.config }}
{{- $text := toString $value }}
{{- if and (kindIs "float64" $value) (eq $value (float64 (int64 $value))) }}
{{- $text = int64 $value | toString }}
{{- end }}
- name: {{ printf "INFERGATE_BATCH_%s" ($key | snakecase | upper) }}
  value: {{ $text | quote }}
{{- end }}
{{- end }}

{{/* infergate.batchVolumeMount: the files' volume, mounted where INFERGATE_BATCH_STORAGE_URL points (nothing for object storage). */}}
{{- define "infergate.batchVolumeMount" -}}
{{- if not (include "infergate.batchObjectStore" .) }}
- name: batch-files
  mountPath: {{ .Values.batch.storage.pvc.mountPath }}
{{- end }}
{{- end }}

{{/* infergate.batchVolume: the PersistentVolumeClaim of the files as a pod volume. */}}
{{- define "infergate.batchVolume" -}}
{{- if not (include "infergate.batchObjectStore" .) }}
- name: batch-files
  persistentVolumeClaim:
    claimName: {{ include "infergate.batchClaimName" . }}
{{- end }}
{{- end }}

{{/* infergate.batchRouterEnv: what the router's files and batches routes need (nothing when batch is disabled). */}}
{{- define "infergate.batchRouterEnv" -}}
{{- if .Values.batch.enabled }}
{{- include "infergate.batchEnv" . }}
# Uploads larger than 500 KB are spooled to a temporary file while they are validated.
- name: TMPDIR
  value: /var/tmp/uploads
{{- else }}
- name: INFERGATE_BATCH_ENABLED
  value: "false"
{{- end }}
{{- end }}

{{/* infergate.batchRouterVolumeMounts: the files' volume and the upload spool in the router pods. */}}
{{- define "infergate.batchRouterVolumeMounts" -}}
{{- if .Values.batch.enabled }}
{{- include "infergate.batchVolumeMount" . }}
- name: batch-uploads
  mountPath: /var/tmp/uploads
{{- end }}
{{- end }}

{{/* infergate.batchRouterVolumes: the router pods' volumes for the Batch API. */}}
{{- define "infergate.batchRouterVolumes" -}}
{{- if .Values.batch.enabled }}
{{- include "infergate.batchVolume" . }}
- name: batch-uploads
  emptyDir:
    sizeLimit: {{ .Values.batch.router.uploadSpoolSize }}
{{- end }}
{{- end }}
