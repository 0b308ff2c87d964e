"""The rows of the paper's ablation (Table 3) and the training runs that produce them.

Several rows come from one run: the global stream and the student of a DeSKPro run are trained by
separate loss terms on separate parameters, so its body stream is row 3, its student row 5 and both
together the DeSKPro row. For the same reason a student trained alone (phase "student": the terms
of a DeSKPro run with alpha 0) is row 4, and row 7 puts it beside the DeSKPro run's body stream.
The teacher rows (6, DeSKPro*) use the face teacher on the restored faces.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Run:
    """One training run of the ablation: a trainer phase and what it overrides."""

    name: str
    phase: str
    csa_form: str | None = None  # None: the config's default
    needs_teacher: bool = False


@dataclass(frozen=True)
class Row:
    """One row of Table 3: which run's checkpoint and which stream to evaluate."""

    key: str
    method: str
    components: str  # what is on, in the paper's terms
    run: str | None  # the DeSKPro run whose model is evaluated (None: a face network alone)
    stream: str  # "body", "face" or "both"
    face_run: str | None = None  # a face-only run (teacher, student) in place of the run's student
    restored_faces: bool = False  # the face stream looks at the restored faces (the teacher rows)


RUNS = {
    run.name: run
    for run in (
        Run("teacher", "teacher"),
        Run("global", "baseline", csa_form="none"),
        Run("csa", "baseline"),
        Run("deskpro", "deskpro", needs_teacher=True),
        Run("student", "student"),
    )
}

ROWS = (
    Row("1", "baseline", "global stream", "global", "body"),
    Row("2", "+CSA", "global + CSA, lambda 0", "csa", "body"),
    Row("3", "+CSA +L_att", "global + CSA + L_att", "deskpro", "body"),
    Row("4", "student", "face student, alpha 0", None, "face", "student"),
    Row("5", "student + KP", "face student + distillation", "deskpro", "face"),
    Row("6", "teacher", "teacher on restored faces", None, "face", "teacher", restored_faces=True),
    Row("7", "rows 3+4", "global + CSA + L_att, student alpha 0", "deskpro", "both", "student"),
    Row("DeSKPro", "rows 3+5", "global + CSA + L_att, student + distillation", "deskpro", "both"),
    Row(
        "DeSKPro*",
        "rows 3+6",
        "global + CSA + L_att, teacher on restored faces",
        "deskpro",
        "both",
        "teacher",
        restored_faces=True,
    ),
)
ROW_KEYS = tuple(row.key for row in ROWS)


def select_rows(keys) -> tuple[Row, ...]:
    """The rows named by `keys` (Table 3 order); ValueError naming an unknown key."""
    if not keys:
        return ROWS
    wanted = [str(k).strip() for k in keys]
    unknown = [k for k in wanted if k not in ROW_KEYS]
    if unknown:
        raise ValueError(f"--rows: unknown row(s) {', '.join(unknown)}; known: {', '.join(ROW_KEYS)}")
    return tuple(row for row in ROWS if row.key in wanted)


def runs_for(rows) -> list[Run]:
    """The runs the rows need, teacher first when any needs it."""
    names = {name for row in rows for name in (row.run, row.face_run) if name is not None}
    if any(RUNS[name].needs_teacher for name in names):
        names.add("teacher")
    return [run for name, run in RUNS.items() if name in names]
