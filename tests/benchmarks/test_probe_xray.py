"""benchmarks/probe_xray.py: its AUC matches torchmetrics', and report findings are read as the probe's labels."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def probe(load_benchmark):
    return load_benchmark("probe_xray")


def test_auc_matches_torchmetrics_with_ties(probe):
    import torch
    from torchmetrics.functional.classification import binary_auroc

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    scores = np.round(rng.normal(size=40) + labels, 1)  # rounded: ties between classes
    reference = float(binary_auroc(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels)))
    assert probe.auc(scores, labels) == pytest.approx(reference, abs=1e-6)
    assert probe.auc(scores, np.ones(40, dtype=int)) is None


def test_findings_of_reads_cardiomegaly_effusion_and_a_non_negated_pacemaker(probe):
    text = ("FINDINGS: Left chest wall pacemaker with leads in the right atrium. Moderate cardiomegaly. "
            "No pleural effusion. IMPRESSION: Cardiomegaly.")
    assert probe.findings_of(text) == [1, 0, 1]
    assert probe.findings_of("FINDINGS: No pacemaker. Small left pleural effusion. Heart size is normal.") == [0, 1, 0]
