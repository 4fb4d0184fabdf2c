"""Hospital protocols in: what RIS, FHIR servers and AI platforms send, as the event
contracts of DESIGN §3 (DESIGN §11). ``hl7``: HL7 v2 ORU^R01 radiology results."""
