"""Print the QAT table (results/qat/README.md) from run.sh's runs: fp32 and int8 test accuracy per group."""

import json
import statistics
import sys
from pathlib import Path

import yaml


def cell(values: list[float]) -> str:
    return f"{values[0]:.2f}" if len(values) == 1 else f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main(folders: list[str]) -> None:
    print("| runs | student.qat | n | fp32 acc | int8 acc | run's own test acc |\n|---|---|---|---|---|---|")
    for folder in map(Path, folders):
        runs = [folder] if (folder / "config.yaml").is_file() else sorted(folder.glob("[0-9]*"))
        groups: dict[bool, list[tuple[float, float, float]]] = {}
        for run in runs:
            qat = bool(yaml.safe_load((run / "config.yaml").read_text())["student"].get("qat"))
            card = json.loads((run / "export" / "model_card.json").read_text())["artefacts"]
            own = json.loads((run / "metrics.json").read_text())["final_test_acc"]
            groups.setdefault(qat, []).append((card["onnx"]["check"]["accuracy"], card["int8"]["accuracy"], own))
        for qat, rows in groups.items():
            columns = [cell([row[i] for row in rows]) for i in range(3)]
            print(f"| {folder.name} | {str(qat).lower()} | {len(rows)} | " + " | ".join(columns) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
