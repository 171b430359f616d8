from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medm2g_core.config import AugmentConfig
from medm2g_core.data.datasets import AlignDataset, ImageTextDataset, PairSliceDataset
from medm2g_core.data.splits import split_of, split_records
from medm2g_core.data.transforms import NormState, augment_view, denormalize, normalize, resize_back, resize_image, slice_indices

sys.path.insert(0, str(Path(__file__).parents[1]))
from tiny_cohort import write_cohort  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    return write_cohort(root, patients=4, ct_only=("P0002",))


def test_splits_are_deterministic_patient_level():
    ids = [f"P{i:04d}" for i in range(400)]
    first = [split_of(i, seed=0) for i in ids]
    assert first == [split_of(i, seed=0) for i in reversed(ids)][::-1]
    counts = {s: first.count(s) for s in ("train", "val", "test")}
    assert 280 < counts["train"] < 360 and counts["val"] > 20 and counts["test"] > 20
    assert first != [split_of(i, seed=1) for i in ids]
    class R:
        def __init__(self, pid): self.patient_id = pid
    groups = split_records([R(i) for i in ids])
    assert sum(len(g) for g in groups.values()) == 400


def test_cohort_splits_json_wins_and_unlisted_patients_fall_back_to_the_hash(tmp_path):
    import json

    from medm2g_core.data.datasets import records_for_split
    from medm2g_core.data.manifest import scan_cohort
    from medm2g_core.data.splits import read_splits_file
    from medm2g_core.errors import InputError

    write_cohort(tmp_path / "nested" / "site", patients=1)  # relative id "nested/site/P0000"
    write_cohort(tmp_path, patients=3, ct_only=("P0000", "P0001", "P0002"))
    hashed = {pid: split_of(pid) for pid in ("P0000", "P0001", "P0002", "nested/site/P0000")}
    # Listed by folder name (P0001) or by relative id (nested/site/P0000), each against its hash split.
    wanted = {"P0001": "test" if hashed["P0001"] != "test" else "val",
              "nested/site/P0000": "val" if hashed["nested/site/P0000"] != "val" else "test"}
    listing = {"train": [], "val": [], "test": [], "validate": []}
    for pid, split in wanted.items():
        listing["validate" if split == "val" else split].append(pid)
    listing["train"].append("P9999")  # not in the cohort: ignored
    (tmp_path / "splits.json").write_text(json.dumps(listing))
    records = scan_cohort(tmp_path)
    groups = split_records(records)  # root from the records (scan_cohort sets cohort_root)
    got = {r.patient_id: name for name, group in groups.items() for r in group}
    assert got == {**hashed, **wanted}
    assert split_records(records, root=tmp_path / "nested") == split_records(records, root=tmp_path / "missing")  # no file there
    assert [r.patient_id for r in records_for_split(tmp_path, got["P0001"])] == [p for p in sorted(got) if got[p] == got["P0001"]]
    # Hand-built records (no cohort_root) keep the hash split.
    class R:
        def __init__(self, pid): self.patient_id = pid
    assert {name for name, g in split_records([R("P0001")]).items() if g} == {hashed["P0001"]}

    for bad, message in (("{", "not readable"), ('{"train": "P1"}', "list of patient ids"), ('{"holdout": ["P1"]}', "unknown split"),
                         ('{"train": ["P1"], "test": ["P1"]}', "both train and test")):
        (tmp_path / "splits.json").write_text(bad)
        with pytest.raises(InputError, match=message):
            read_splits_file(tmp_path)


def test_normalisation_inverses():
    hu = np.array([-2000, -1024, 0, 1000, 3000, 4000], dtype=np.int16)
    y, state = normalize(hu, "ct")
    assert y.min() == -1 and y.max() == 1 and state.kind == "window" and state.units == "HU"
    np.testing.assert_allclose(denormalize(y, state)[1:5], [-1024, 0, 1000, 3000], atol=1e-3)
    mri = np.random.default_rng(0).gamma(2, 100, (10, 10, 10)).astype(np.float32)
    y, state = normalize(mri, "t1")
    assert state.percentiles == (0.5, 99.5) and -1 <= y.min() and y.max() <= 1
    assert state.low == pytest.approx(np.percentile(mri, 0.5))
    xray = np.array([[0, 65535]], dtype=np.uint16)
    y, state = normalize(xray, "xray")
    assert y.tolist() == [[-1.0, 1.0]] and NormState.from_json(state.to_json()) == state
    assert normalize(np.array([[0, 255]], dtype=np.uint8), "xray")[1].high == 255


def test_slicing_resizing_and_augmentation():
    assert slice_indices(10, "all") == list(range(10)) and slice_indices(10, "middle") == [5]
    assert len(slice_indices(40, 4)) == 4
    image = torch.linspace(-1, 1, 12 * 10).reshape(12, 10)
    small = resize_image(image, 8)
    assert small.shape == (1, 8, 8) and resize_back(small, (12, 10)).shape == (1, 12, 10)
    config = AugmentConfig(probability=1.0)
    view_a = augment_view(small, config, generator=torch.Generator().manual_seed(1))
    view_b = augment_view(small, config, generator=torch.Generator().manual_seed(1))
    assert torch.equal(view_a, view_b) and not torch.equal(view_a, small)
    assert view_a.min() >= -1 and view_a.max() <= 1
    # never a left-right flip: a left-bright image stays left-bright
    left = -torch.ones(1, 32, 32)
    left[:, :, :8] = 1
    for seed in range(20):
        out = augment_view(left, config, generator=torch.Generator().manual_seed(seed))
        assert out[:, :, :12].mean() > out[:, :, -12:].mean()


def test_align_dataset_items_and_collate(cohort):
    dataset = AlignDataset(cohort, modalities=["xray", "ct", "mri-t1"], image_size=8, augment=AugmentConfig(), slices_per_volume=2, cache_items=2)
    item = dataset[1]
    assert item["images"]["ct"].shape == (2, 2, 1, 8, 8) and "effusion" in item["text"] and item["labels"] == {"effusion": 1}
    assert item["images"]["xray"].shape == (2, 1, 1, 8, 8)  # a 2D image is one slice, not N copies
    assert torch.equal(dataset[5]["images"]["ct"], dataset[5]["images"]["ct"])  # pure function of the index
    assert not torch.equal(dataset[1]["images"]["ct"], dataset[5]["images"]["ct"])  # same patient, next epoch
    batch = dataset.collate([dataset[i] for i in range(4)])
    assert batch["images"]["mri-t1"].shape == (4, 2, 2, 1, 8, 8) and batch["images"]["xray"].shape == (4, 2, 1, 1, 8, 8)
    assert batch["present"]["mri-t1"].tolist() == [True, True, False, True]
    assert batch["labels"] == [{"effusion": 0}, {"effusion": 1}, {"effusion": 0}, {"effusion": 1}]
    assert batch["has_text"].all() and len(dataset.reader._stacks) <= 2 and not dataset.reader._cache
    evaluation = AlignDataset(cohort, modalities=["ct"], image_size=8)
    assert evaluation[0]["images"]["ct"].shape == (1, 1, 1, 8, 8) and evaluation[0]["slice_index"]["ct"] == [3]


def test_align_dataset_decodes_each_file_once_and_matches_per_slice_resizing(cohort, monkeypatch):
    from medm2g_core import io

    reads = []
    real_read = io.read
    monkeypatch.setattr(io, "read", lambda path, **kw: reads.append(str(path)) or real_read(path, **kw))
    modalities = ["xray", "ct", "mri-t1"]
    dataset = AlignDataset(cohort, modalities=modalities, image_size=8, augment=AugmentConfig(), slices_per_volume=3, cache_items=16)
    for index in range(3 * len(dataset)):  # three epochs, two views each
        dataset[index]
    files = sum(1 for record in cohort for m in modalities if any(k.value == m for k in record.files))
    assert len(reads) == len(set(reads)) == files
    # The cached stack resized in one call equals resizing the chosen slice alone (the old path).
    evaluation = AlignDataset(cohort, modalities=["ct"], image_size=8, slices_per_volume=3, cache_items=0)
    item = evaluation[0]
    volume, _ = normalize(real_read(cohort[0].files[[k for k in cohort[0].files if k.value == "ct"][0]])[0], "ct")
    for position, k in enumerate(item["slice_index"]["ct"]):
        torch.testing.assert_close(item["images"]["ct"][0, position], resize_image(volume[:, :, k], 8), rtol=0, atol=1e-6)
    # A bounded LRU: the least recently used stack goes first.
    small = AlignDataset(cohort, modalities=["ct"], image_size=8, cache_items=2)
    for index in range(3):
        small[index]
    assert [key[0] for key in small.reader._stacks] == [str(cohort[i].files[k]) for i in (1, 2) for k in cohort[i].files if k.value == "ct"]


def test_pair_slice_dataset(cohort):
    dataset = PairSliceDataset(cohort, sources=["t1", "t2"], target="ct", image_size=8, slices="all", context_slices=1)
    assert dataset.skipped == ["P0002"] and len(dataset) == 3 * 6
    item = dataset[0]
    assert item["source"].shape == (6, 8, 8) and item["target"].shape == (1, 8, 8)
    assert item["slice_index"] == 0 and item["original_shape"] == (16, 16)
    state = NormState.from_json(item["target_norm"])
    assert state.units == "HU"
    batch = PairSliceDataset.collate([dataset[i] for i in range(3)])
    assert batch["source"].shape == (3, 6, 8, 8) and batch["slice_index"] == [0, 1, 2]
    middle = PairSliceDataset(cohort, sources=["ct"], target="t1", image_size=8, slices="middle")
    assert len(middle) == 3 and middle[0]["slice_index"] == 3
    with pytest.raises(ValueError, match="ImageTextDataset"):
        PairSliceDataset(cohort, sources=["xray"], target="ct", image_size=8)


def test_image_text_dataset(cohort):
    dataset = ImageTextDataset(cohort, image_size=8)
    item = dataset[1]
    assert item["image"].shape == (1, 8, 8) and "effusion" in item["text"] and item["labels"] == {"effusion": 1}
    batch = dataset.collate([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 1, 8, 8) and len(batch["text"]) == 2


def test_augment_report_shuffles_sentences_within_sections():
    import torch

    from medm2g_core.config import AugmentConfig
    from medm2g_core.data.transforms import augment_report

    text = "FINDINGS: Heart size is normal. A 1.4 cm nodule in the right upper lobe. No effusion.\nIMPRESSION: Nodule. Follow-up CT."
    assert augment_report(text, AugmentConfig(), generator=torch.Generator().manual_seed(0)) == text  # off by default
    shuffle = AugmentConfig(sentence_shuffle=True)
    outputs = {augment_report(text, shuffle, generator=torch.Generator().manual_seed(seed)) for seed in range(12)}
    assert len(outputs) > 1
    for out in outputs:
        findings, impression = out.split("IMPRESSION:")
        assert findings.startswith("FINDINGS:")
        assert set(s.strip(" .\n") for s in findings.removeprefix("FINDINGS:").split(". ")) == {
            "Heart size is normal", "A 1.4 cm nodule in the right upper lobe", "No effusion"}  # 1.4 is not a sentence end
        assert set(s.strip(" .\n") for s in impression.split(". ")) == {"Nodule", "Follow-up CT"}
    same = [augment_report(text, shuffle, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert same[0] == same[1]  # a function of the generator
    dropped = augment_report(text, AugmentConfig(word_dropout=0.5), generator=torch.Generator().manual_seed(0))
    assert 0 < len(dropped.split()) < len(text.split())


def test_pair_slice_dataset_refuses_pairs_on_different_grids(tmp_path):
    """Slice k of one grid is not slice k of another: refused with the file named and the fix, never
    clamped and paired silently."""
    from medm2g_core import io
    from medm2g_core.data.manifest import scan_cohort
    from medm2g_core.errors import InputError
    from medm2g_core.types import ImageMeta

    patient = tmp_path / "cohort" / "S1"
    t1_grid = ImageMeta(spacing=(1.0, 1.0, 1.0), shape=(8, 8, 6))
    io.write(patient / "mri-t1.nii.gz", np.ones(t1_grid.shape, np.int16), t1_grid)
    t2_grid = ImageMeta(spacing=(1.0, 1.0, 2.0), shape=(8, 8, 3))
    io.write(patient / "mri-t2.nii.gz", np.ones(t2_grid.shape, np.int16), t2_grid)
    records = scan_cohort(tmp_path / "cohort")
    with pytest.raises(InputError) as caught:
        PairSliceDataset(records, sources=["t1"], target="t2", image_size=8)
    message = str(caught.value)
    assert "mri-t1.nii.gz" in message and "(8, 8, 6) vs (8, 8, 3)" in message and "--register" in message
    # same shape, shifted origin: still another grid
    io.write(patient / "mri-t2.nii.gz", np.ones(t1_grid.shape, np.int16), t1_grid.replace(origin=(0.0, 0.0, 5.0)))
    with pytest.raises(InputError, match="other origin or direction"):
        PairSliceDataset(scan_cohort(tmp_path / "cohort"), sources=["t1"], target="t2", image_size=8)
    io.write(patient / "mri-t2.nii.gz", np.ones(t1_grid.shape, np.int16), t1_grid)
    assert len(PairSliceDataset(scan_cohort(tmp_path / "cohort"), sources=["t1"], target="t2", image_size=8)) == 6


def test_real_ixi_is_refused_until_registered(shared_data, tmp_path):
    from medm2g_core.data.importers import import_dataset
    from medm2g_core.data.manifest import scan_cohort
    from medm2g_core.errors import InputError

    source = shared_data / "brain_mri_ixi002"
    if not source.is_dir():
        pytest.skip("no brain_mri_ixi002 in shared data")
    import_dataset("ixi", source, out=tmp_path / "plain")
    with pytest.raises(InputError, match=r"mri-t1.nii.gz.*another voxel grid than mri-t2.nii.gz"):
        PairSliceDataset(scan_cohort(tmp_path / "plain"), sources=["t1"], target="t2", image_size=16, slices=2)
    import_dataset("ixi", source, out=tmp_path / "registered", register=True)
    dataset = PairSliceDataset(scan_cohort(tmp_path / "registered"), sources=["t1"], target="t2", image_size=16, slices=2)
    assert len(dataset) == 2 and dataset[0]["source"].shape == (1, 16, 16)


def test_pair_slice_target_keeps_a_thin_bright_structure_when_shrunk(tmp_path):
    """A one-voxel-wide bright line (a skull in a 256² CT) stays bright in the shrunk target — no antialiasing, which
    would average it into its neighbours and teach the flow blur — while the source is antialiased."""
    from medm2g_core import io
    from medm2g_core.data.manifest import scan_cohort
    from medm2g_core.types import ImageMeta

    grid = ImageMeta(spacing=(1.0, 1.0, 1.0), shape=(32, 32, 2))
    image = np.zeros(grid.shape, np.float32)
    image[:, 10, :] = 1000.0  # one line of voxels, 4× thinner than an output pixel
    patient = tmp_path / "cohort" / "S1"
    io.write(patient / "ct.nii.gz", (image - 1000.0).astype(np.int16), grid.replace(modality="ct", units="HU"))
    io.write(patient / "mri-t1.nii.gz", image.astype(np.int16), grid.replace(modality="mri-t1"))
    dataset = PairSliceDataset(scan_cohort(tmp_path / "cohort"), sources=["t1"], target="ct", image_size=8)
    item = dataset[0]
    background = float(item["target"].min())
    target_peak = float(item["target"].max()) - background
    source_peak = float(item["source"].max() - item["source"].min())
    full = 1000.0 / 4024.0 * 2  # the line's height in the [-1, 1] CT window
    assert target_peak > 0.45 * full  # bilinear at the sample points: at least half of it survives
    assert item["source"].shape == (1, 8, 8) and source_peak < 0.45 * 2  # the antialiased source: spread over 4 rows
