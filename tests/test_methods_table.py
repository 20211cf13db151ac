"""results/methods/collect.py: the every-method table, from run folders written here (no training)."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

from scipy import stats

REPO = Path(__file__).resolve().parents[1]
COLLECT = REPO / "results" / "methods" / "collect.py"


def job(folder: Path, acc: float | None, seconds: float = 1.0, error: str = "", slowdown: float = 1.0) -> None:
    """A run folder as kdrun leaves it; its second epoch `slowdown` times slower (other work took the CPU)."""
    folder.mkdir(parents=True)
    if acc is None:
        (folder / "metrics.json").write_text(json.dumps({"status": "failed", "error": error}))
        return
    (folder / "metrics.json").write_text(json.dumps({"status": "completed", "final_test_acc": acc}))
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps({"epoch": e, "seconds": seconds * slowdown**e}) for e in range(2)))


def sweep(out: Path, name: str, accs: list, seconds: float = 1.0, error: str = "", slowdown: float = 1.0) -> None:
    for i, acc in enumerate(accs):
        job(out / name / str(i), acc, seconds, error, slowdown)
    (out / name / "multirun.yaml").write_text("{}\n")


def welch_p(a: list[float], b: list[float]) -> float:
    """Welch's two-sided p written out: t and the Welch-Satterthwaite degrees of freedom."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    t = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return 2 * stats.t.sf(abs(t), df)


def rows(out: Path) -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, str(COLLECT), str(out)], capture_output=True, text=True, check=True)
    lines = [line.strip().strip("|") for line in done.stdout.splitlines() if line.startswith("| ")]
    table = [[c.strip() for c in re.split(r"(?<!\\)\|", line)] for line in lines]
    return {cells[0]: cells[1:] for cells in table}


def test_the_table_has_every_preset_the_teacher_scratch_welch_and_fastest_epoch_against_kd(tmp_path):
    job(tmp_path / "teacher", 91.5)
    scratch, kd, dkd = [70.0, 71.0, 72.5], [73.0, 74.5, 74.0], [60.0, 61.0]
    sweep(tmp_path, "scratch", scratch, seconds=1.0)
    sweep(tmp_path, "kd", kd, seconds=2.0)
    sweep(tmp_path, "dkd", [*dkd, None], seconds=3.0, error="loss is inf at epoch 1", slowdown=10.0)
    sweep(tmp_path, "ft", [None, None], error="loss is inf at epoch 1 | step 3")

    table = rows(tmp_path)

    presets = {p.stem for p in (REPO / "conf" / "loss").glob("*.yaml")} - {"ce"}
    assert set(table) == presets | {"(teacher)", "(scratch)", "loss="}
    assert table["(teacher)"][1:3] == ["91.50", "1"]
    assert table["(scratch)"][1:3] == ["71.17 ± 1.26", "3"]
    assert table["(scratch)"][4] == "0.50x"
    assert table["kd"][0] == "KD, Hinton et al. 2015"
    assert table["kd"][3] == f"+2.67 (p={welch_p(kd, scratch):.3f})"
    assert table["dkd"][1:] == ["60.50 ± 0.71", "2 (1 failed: job 2: loss is inf at epoch 1)",
                                f"-10.67 (p={welch_p(dkd, scratch):.3f})", "1.50x"]
    assert table["ft"][1] == "failed: job 0: loss is inf at epoch 1 \\| step 3"
    assert table["sp"][1] == "not run"
