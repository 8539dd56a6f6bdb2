"""``make bench`` rewrites its table and keeps the sections measured by hand below it."""

from benchmarks import report


def test_a_new_report_keeps_the_hand_written_sections_of_the_old_one(tmp_path, capsys):
    out = tmp_path / "REPORT.md"
    out.write_text("# Speed report\n\nold table\n\n## Before and after\n\n| a | b |\n\n## Not measured\n\nwhy\n")
    assert report.main(["--only", "no module has this name", "--out", str(out)]) == 0
    text = out.read_text()
    assert "old table" not in text and text.startswith("# Speed report\n\nMeasured ")
    assert text.endswith("\n## Before and after\n\n| a | b |\n\n## Not measured\n\nwhy\n")
    assert report.kept_sections(tmp_path / "missing.md") == ""
