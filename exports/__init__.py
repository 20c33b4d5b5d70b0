"""Exports into the clinic's own tools: EDF+/BDF+ recordings and FHIR R4 result bundles.

* :mod:`telediag.exports.edf` — EDF+ (16-bit) or BDF+ (24-bit) files with physical units,
  per-signal calibration and the analysis in the annotation channel; lost ranges make the
  file EDF+D (discontinuous).
* :mod:`telediag.exports.fhir` — a FHIR R4 ``Bundle`` (Observations coded in LOINC / SNOMED CT /
  UCUM, DetectedIssues for alarms, a Device, Patient/Encounter references) from a recording
  folder, and a live exporter that POSTs one per interval from a subscriber thread.
* :mod:`telediag.exports.session` — reads a ``telediag record`` folder back (signals, beats,
  alarms, quality, segments, polyp results) for both.
"""
