"""Physically grounded phantom patients (DESIGN.md §7): chest and head anatomy from tissue classes,
CT in HU, spin-echo MRI (T1, T2, PD), a PA chest DRR, findings, reports and labels.

```python
from medm2g_core.data.synth import synthesize_cohort
folders = synthesize_cohort("cohort", patients=8, anatomy="chest", seed=1)
```
"""

from medm2g_core.data.synth.cohort import SynthPatient, build_patient, synthesize_cohort, synthesize_patient
from medm2g_core.data.synth.findings import DEFAULT_PREVALENCE, FINDINGS, Finding
from medm2g_core.data.synth.preview import write_preview

__all__ = ["synthesize_cohort", "synthesize_patient", "build_patient", "SynthPatient", "Finding", "FINDINGS",
           "DEFAULT_PREVALENCE", "write_preview"]
