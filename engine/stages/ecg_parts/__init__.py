"""Components of the ``ecg_analysis`` stage, each owning its state and testable alone.

* :mod:`.clock` - :class:`~.clock.Timeline` (received sample -> source sample index and
  time, gap-aware) and :class:`~.clock.SignalHistory` (recent raw signal);
* :mod:`.gate` - :class:`~.gate.QualityGate`: signal quality per block and the usable
  verdict of every detected beat;
* :mod:`.labeller` - :class:`~.labeller.BeatLabeller`: the beat classifier's feature stream,
  labels and the release of each labelled beat;
* :mod:`.rhythm` - :class:`~.rhythm.RhythmMonitor`: atrial fibrillation episodes from the RR
  series (:mod:`telediag.dsp.af`);
* :mod:`.rate` - :class:`~.rate.RateMonitor`: displayed heart rate and HRV with their
  periodic readings;
* :mod:`.asystole` - :class:`~.asystole.AsystoleEvidence`: which quality blocks count as usable
  for asystole and pause (connected isoelectric line, regular-run veto, baseline step);
* :mod:`.leads` - :class:`~.leads.LeadFallback`: the analysis lead over time and the decision to
  fall back to another lead and return;
* alarms: :class:`telediag.dsp.alarms.RhythmAlarms` and
  :class:`telediag.dsp.alarms.TechnicalAlarms`.

:class:`telediag.engine.stages.ecg_analysis.EcgAnalysis` composes them.
"""
