"""labkit.grading.points: the instructor's points file."""

from __future__ import annotations

from pathlib import Path

import pytest

from labkit.grading.config import GradingError
from labkit.grading.points import check_names, load_points, part_points, written_points


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grading.toml"
    path.write_text(text)
    return path


def test_points_per_exercise_part_and_question(tmp_path: Path) -> None:
    table = load_points(
        write(
            tmp_path,
            "[lab02.exercises]\nrestoration_grid = 6\n"
            '[lab02.parts.restoration_grid]\n"resid" = 2\n'
            "[lab02.written]\nq1 = 3\n",
        ),
        "2",
    )
    parts = [("resid", 1.0), ("mlp", 1.0), ("attn", 1.0)]
    assert part_points(table, "restoration_grid", parts) == [3.0, 1.5, 1.5]  # 2:1:1, total 6
    assert part_points(table, "other", [("", 2.0)]) == [2.0]  # defaults
    assert written_points(table, "q1") == 3 and written_points(table, "q2") == 1
    assert load_points(write(tmp_path, "[lab01.exercises]\nsaliency = 2\n"), "02") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[lab01.exercises\n", "not valid TOML"),
        ("[lab01.exercises]\nsaliency = -1\n", "number >= 0"),
        ('[lab01.exercises]\nsaliency = "two"\n', "number >= 0"),
        ("[lab01]\nexercises = 3\n", "must be a table"),
    ],
)
def test_bad_points_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(GradingError, match=message):
        load_points(write(tmp_path, text), "01")


def test_unknown_exercise_names_are_reported(tmp_path: Path) -> None:
    table = load_points(write(tmp_path, "[lab01.exercises]\nsaliancy = 1\n"), "01")
    assert check_names(table, ["saliency"]) == ["saliancy"]
