"""Builds the sample DICOM SR files of this folder with highdicom (run from the repo root:
``.venv/bin/python -m tests.data.dicom_sr.make_samples``; ``--out DIR`` writes elsewhere).

What an AI platform sends under IHE AI Results (AIR): a TID 1500 Imaging Measurement
Report whose measurement groups (TID 1501) name a finding (121071, DCM), include the
algorithm identification (TID 4019: Algorithm Name 111001, Algorithm Version 111003),
and carry a qualitative evaluation (finding present/absent) and/or a numeric score.

* ``pe_positive.dcm``: Comprehensive 3D SR; pulmonary embolism present, probability 0.93.
* ``pe_no_score.dcm``: Comprehensive SR; pulmonary embolism present, no score at all.
* ``two_findings.dcm``: Enhanced SR; intracranial haemorrhage absent (probability 0.12)
  and pneumothorax with a score only, in percent (87 %), so the threshold decides.
* ``no_algorithm.dcm``: Comprehensive 3D SR without algorithm identification
  (non-conforming: refused).
* ``ct_image.dcm``: a 2 x 2 CT image, the evidence the reports reference (wrong SOP class
  for the gateway).

Every UID is derived from a fixed name and every date and time is fixed, so the files are
the same bytes on every run (a unit test rebuilds them and compares).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

HERE = Path(__file__).resolve().parent
STUDY_DATE = "20260105"
STUDY_TIME = "110000"
CONTENT_TIME = "113042.250"  # the AI result: 11:30:42.250 local time
UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")


def uid(name: str) -> str:
    """A UID under pydicom's root, derived from ``name``: the same on every run."""
    return str(generate_uid(entropy_srcs=["imgov-dicom-sr-sample", name]))


def ct_image() -> Dataset:
    """A 2 x 2 CT slice with the patient and study the reports are about."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid("ct-image")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid("ct-image")
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("ct-series")
    ds.FrameOfReferenceUID = uid("frame-of-reference")
    ds.PatientID = "MRN123"
    ds.PatientName = "Doe^Jane"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.AccessionNumber = "ACC-1"
    ds.StudyID = "1"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = STUDY_TIME
    ds.ReferringPhysicianName = ""
    ds.Modality = "CT"
    ds.Manufacturer = "Example Scanners"
    ds.InstitutionName = "Example General Hospital"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.PixelData = np.array([[0, 40], [80, -1000]], dtype="<i2").tobytes()
    return ds


def algorithm(name: str = "PE-Detect", version: str = "2.1.0") -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=name, version=version)


def group(
    name: str,
    finding: hd.sr.CodedConcept | object,
    *,
    present: bool | None,
    score: float | None,
    unit: hd.sr.CodedConcept = UNITLESS,
    algorithm_id: hd.sr.AlgorithmIdentification | None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """One TID 1501 group: the finding, its evaluation present/absent, its probability."""
    evaluations = []
    if present is not None:
        value = codes.SCT.Present if present else codes.SCT.Absent
        evaluations.append(hd.sr.QualitativeEvaluation(name=finding, value=value))
    measurements = []
    if score is not None:
        measurements.append(hd.sr.Measurement(name=codes.DCM.Probability, value=score, unit=unit))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid(f"{name}-tracking"), identifier=name),
        finding_type=finding,
        algorithm_id=algorithm_id,
        qualitative_evaluations=evaluations or None,
        measurements=measurements or None,
    )


def report(
    name: str,
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations],
    builder: type[hd.sr.ComprehensiveSR] | type[hd.sr.Comprehensive3DSR] | type[hd.sr.EnhancedSR],
) -> Dataset:
    image = ct_image()
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uid("ai-device"), name="AI Platform", manufacturer_name="Example AI"
        ),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
        referenced_images=[image],
    )
    sr = builder(
        evidence=[image],
        content=content[0],
        series_instance_uid=uid(f"{name}-series"),
        series_number=900,
        sop_instance_uid=uid(name),
        instance_number=1,
        manufacturer="Example AI",
        institution_name="Example General Hospital",
        is_complete=True,
    )
    # highdicom stamps the time of building: pin every date and time to the sample's.
    for keyword in ("InstanceCreationDate", "SeriesDate", "ContentDate"):
        if keyword in sr:
            setattr(sr, keyword, STUDY_DATE)
    for keyword in ("InstanceCreationTime", "SeriesTime", "ContentTime"):
        if keyword in sr:
            setattr(sr, keyword, CONTENT_TIME)
    for equipment in sr.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in equipment:
            equipment.ContributionDateTime = STUDY_DATE + CONTENT_TIME
    return sr


def samples() -> dict[str, Dataset]:
    """Every sample by file name."""
    pe = codes.SCT.PulmonaryEmbolism
    return {
        "pe_positive.dcm": report(
            "pe-positive",
            [group("PE-1", pe, present=True, score=0.93, algorithm_id=algorithm())],
            hd.sr.Comprehensive3DSR,
        ),
        "pe_no_score.dcm": report(
            "pe-no-score",
            [group("PE-1", pe, present=True, score=None, algorithm_id=algorithm())],
            hd.sr.ComprehensiveSR,
        ),
        "two_findings.dcm": report(
            "two-findings",
            [
                group(
                    "ICH-1",
                    codes.SCT.IntracranialHemorrhage,
                    present=False,
                    score=0.12,
                    algorithm_id=algorithm("Neuro-Triage", "5.0"),
                ),
                group(
                    "PTX-1",
                    codes.SCT.Pneumothorax,
                    present=None,
                    score=87.0,
                    unit=PERCENT,
                    algorithm_id=algorithm("Chest-Triage", "1.4.2"),
                ),
            ],
            hd.sr.EnhancedSR,
        ),
        "no_algorithm.dcm": report(
            "no-algorithm",
            [group("PE-1", pe, present=True, score=0.93, algorithm_id=None)],
            hd.sr.Comprehensive3DSR,
        ),
        "ct_image.dcm": ct_image(),
    }


def write_samples(out: Path) -> list[Path]:
    """Writes every sample as a DICOM Part 10 file into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, ds in samples().items():
        path = out / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE)
    for path in write_samples(parser.parse_args(argv).out):
        print(f"{path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
