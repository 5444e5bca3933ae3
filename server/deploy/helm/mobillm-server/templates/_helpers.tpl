{{- define "mobillm.name" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "mobillm.labels" -}}
app.kubernetes.io/name: mobillm-server
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
