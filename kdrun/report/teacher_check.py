"""Say so when the teacher is not clearly better than the student, or the student underfits.

Every "KD hurts" measurement kdrun printed before had one of these causes (a teacher barely
better than, or worse than, the student trained alone; a student too small or too briefly trained
to fit its data), so the run and the report name it with the numbers instead of leaving the
reader to blame the method.
"""

from __future__ import annotations

from kdrun.report.aggregate import Study


CLEAR_MARGIN = 1.0  # points of test accuracy a teacher needs above its student to be clearly better
UNDERFIT_GAP = 10.0  # points by which the last epoch's train accuracy may trail the test accuracy
FALL = 5.0  # points the train accuracy may fall from its best epoch to the last


def run_warning(summary: dict) -> str | None:
    """One distillation run: its teacher against the student it distilled."""
    teacher, student = summary.get("teacher_test_acc"), summary.get("final_test_acc")
    if teacher is None or student is None or teacher >= student + CLEAR_MARGIN:
        return None
    return (f"the teacher {summary.get('teacher_arch', '?')} ({teacher:.2f}%) is not clearly better than the student "
            f"it distilled, {summary['arch']} ({student:.2f}%): a teacher this close has little to add; train it "
            f"longer or choose a stronger one, and compare with strategy=scratch")


def underfit_warning(summary: dict, history: list[dict]) -> str | None:
    """A run whose student underfits: its last train accuracy well below its test accuracy, or falling.
    Not judged on mixed images (mixup, cutmix), whose train accuracy counts one of two labels."""
    train = [r["train_acc"] for r in history if r.get("train_acc") is not None]
    test = summary.get("final_test_acc")
    if not train or test is None or (summary.get("mixup") or summary.get("cutmix")):
        return None
    last, best = train[-1], max(train)
    if last < test - UNDERFIT_GAP:
        how = f"its last train accuracy ({last:.2f}%) is {test - last:.1f} points below its test accuracy ({test:.2f}%)"
    elif last < best - FALL:
        how = f"its train accuracy fell from {best:.2f}% to {last:.2f}% by the last epoch"
    else:
        return None
    return (f"the student {summary.get('arch', '?')} underfits: {how}; what usually helps: more epochs, a larger "
            "student, a lower learning rate if it fell, or lighter augmentation")


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
