"""Per-class test accuracy of every run: what a student learnt of each class, one omitted from its
training split included (Hinton et al. 2015, section 3's omitted digit)."""

from __future__ import annotations

from kdrun.report.jobs import JobRecord
from kdrun.report.tables import Table


def per_class_table(jobs: list[JobRecord]) -> Table | None:
    """One row per completed run that recorded per_class_test_acc: its strategy, labels, omitted classes, seed,
    then the test accuracy of each class (%); None when no run did."""
    runs = [job for job in jobs if job.status == "completed" and job.metrics.get("per_class_test_acc")]
    if not runs:
        return None
    classes = list(dict.fromkeys(name for job in runs for name in job.metrics["per_class_test_acc"]))
    head = ["run", "strategy", "labelled", "omitted", "seed"]
    one_parent = len({job.path.parent for job in runs}) <= 1
    csv_rows, rows = [], []
    for job in runs:
        m = job.metrics
        omitted = job.config.get("dataset.omit_classes") or []
        row = {"run": job.path.name if one_parent else str(job.path), "strategy": m.get("strategy", ""),
               "labelled": m.get("labelled_images", ""), "omitted": " ".join(map(str, omitted)),
               "seed": m.get("seed", ""), **{c: m["per_class_test_acc"].get(c) for c in classes}}
        csv_rows.append(row)
        rows.append([row[c] for c in head] + [row[c] for c in classes])
    return Table("per-class test accuracy (%, final weights)", head + classes, rows, head + classes, csv_rows)
