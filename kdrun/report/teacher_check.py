"""Say so when the teacher is no better than the student: distillation then has nothing to add.

Every "KD hurts" measurement kdrun printed before had this cause (a teacher barely
better than, or worse than, the student trained alone), so the run and the report name
it with both numbers instead of leaving the reader to blame the method.
"""

from __future__ import annotations

from kdrun.report.aggregate import Study


def run_warning(summary: dict) -> str | None:
    """One distillation run: its teacher against the student it distilled."""
    teacher, student = summary.get("teacher_test_acc"), summary.get("final_test_acc")
    if teacher is None or student is None or teacher > student:
        return None
    return (f"the teacher {summary.get('teacher_arch', '?')} ({teacher:.2f}%) is no better than the student it "
            f"distilled, {summary['arch']} ({student:.2f}%): a weak teacher has nothing to add; train it longer "
            f"or choose a stronger one, and compare with strategy=scratch")


def study_warnings(s: Study) -> list[str]:
    """Each teacher against each from-scratch student on the same data (mean over seeds)."""
    warnings = []
    for teacher in s.teachers:
        for scratch in s.scratch_refs:
            if scratch.dataset != teacher.dataset:
                continue
            t, st = teacher.stat(), scratch.stat("final_test_acc")
            if t.mean <= st.mean:
                warnings.append(f"the teacher {teacher.arch} ({t.mean:.2f}%, n={t.n}) is no better than the student "
                                f"{scratch.arch} trained from scratch ({st.mean:.2f}%, n={st.n}): distillation from "
                                f"it cannot be expected to help")
    return warnings
