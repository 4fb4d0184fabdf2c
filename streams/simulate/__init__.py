"""Synthetic event generator: a seeded multi-site clinic (``imgov simulate``).

Pure generation (no clock, no global random state, no I/O): ``config`` (the knobs),
``clinic`` with ``alerts`` and ``reports`` (studies and their events), ``scenarios``
(drift, scanner change), ``delivery`` (delays, duplicates, losses, delivery order),
``run`` (all of it in memory), ``truth`` (ground truth records). I/O at the edges:
``output`` (files), ``native`` (the messages hospital systems send: HL7 v2, FHIR,
DICOM SR, for ``imgov gateway``), ``producer`` (Kafka), ``overrides`` and ``cli``
(the command).
"""
