"""Baselines that stand beside every model number (../shared/EVALUATION.md "Baselines beside every number").

- Translation: ``intensity.IntensityMap`` — identity after a monotone quantile (histogram) mapping of
  source to target intensities fitted on the training pairs inside the body; and
  ``regression.RegressionModel`` — the flow's own network trained as a pure L1 regressor for the
  flow's step budget through the one training loop.
- Report generation: ``reports.ReportBaselines`` — nearest-neighbour retrieval of a training report
  through the aligned space, and the most frequent training report.

Fitting and prediction over cohorts live in ``medm2g_core.workflows.baselines``; each baseline is
stored in the bundle under ``baselines/`` (JSON, or config + safetensors).
"""

TRANSLATION_BASELINES = ("identity", "regression")
REPORT_BASELINES = ("retrieval", "most-frequent")
