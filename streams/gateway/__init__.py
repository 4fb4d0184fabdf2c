"""Hospital protocols in: what RIS, FHIR servers and AI platforms send, as the event
contracts of DESIGN §3 (DESIGN §11), on the input topics.

- ``hl7`` (mapping) and ``mllp`` (listener): HL7 v2 ORU^R01 radiology results -> ReportEvent.
- ``fhir`` (mapping) and ``fhir_http`` (listener): FHIR R4 DiagnosticReport, Bundle and
  Communication -> ReportEvent, AlertEvent.
- ``dicom_sr``: DICOM SR AI results (TID 1500) over C-STORE -> InferenceEvent.
- ``delivery``: the one seam to Kafka (acks=all before any protocol acknowledgement;
  dead letters with the original bytes); ``settings``: ``IMGOV_GATEWAY_*``.
"""
