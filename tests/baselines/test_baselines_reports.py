"""Report baselines: most frequent report (mode after whitespace normalisation) and aligned-space retrieval."""

import torch

from medm2g_core.baselines.reports import ReportBaselines, most_frequent_report, nearest_reports, normalise_whitespace


def test_most_frequent_picks_the_mode_after_whitespace_normalisation():
    texts = ["FINDINGS: normal.", "FINDINGS:  normal.\n", "FINDINGS: effusion.", " FINDINGS: normal. ", "FINDINGS: effusion."]
    assert most_frequent_report(texts) == ("FINDINGS: normal.", 3)
    assert normalise_whitespace("a \n\t b") == "a b"
    # ties go to the lexicographically first text (deterministic)
    assert most_frequent_report(["b", "a", "b", "a"]) == ("a", 2)


def test_report_baselines_roundtrip(tmp_path):
    fitted = ReportBaselines.fit({"P2": "x  y", "P1": "z", "P3": "x y"}, image_modality="xray")
    assert fitted.patients == ["P1", "P2", "P3"] and fitted.most_frequent == "x y" and fitted.most_frequent_count == 2
    assert ReportBaselines.load(fitted.save(tmp_path / "r.json")) == fitted


class TinyAligned:
    """An aligned space by construction: image k (constant value k/10) and report "finding k" both embed
    to the unit vector e_k — so retrieval must return the report of the identical image."""

    def encode_image(self, images, modality):
        index = (images.mean(dim=(1, 2, 3)) * 10).round().long()
        return torch.nn.functional.one_hot(index, 8).float(), None

    def encode_text(self, texts):
        index = torch.tensor([int(t.split()[-1]) for t in texts])
        return torch.nn.functional.one_hot(index, 8).float() + 0.01, None, None


def test_retrieval_returns_the_training_report_of_an_identical_image():
    from medm2g_core.baselines.reports import embed_reports

    aligned = TinyAligned()
    reports = [f"finding {k}" for k in (3, 1, 4, 6, 5)]
    embeddings = embed_reports(aligned, reports, batch_size=2)
    images = torch.stack([torch.full((1, 8, 8), k / 10) for k in (4, 6, 3)])
    nearest = nearest_reports(aligned, images, modality="xray", report_embeddings=embeddings)
    assert [reports[i] for i in nearest] == ["finding 4", "finding 6", "finding 3"]
