"""What a run made, told three ways: the dataset card, report.md/html with plots, and `synth inspect`.

- `summary`: the data model. StepReport and RunResult (what the runner tallies), summary.json
  written from them (`summary_dict`) and read back from an output folder (`collect`).
- `card`: the dataset card, the output folder's README.md.
- `markdown`: report.md and report.html (`write_report`), built from an output folder.
- `plots`: the report's PNG figures (matplotlib, headless).
- `terminal`: `synth inspect`, the same numbers as terminal tables.

Nothing here imports the runner or the CLI: they import the report, never the other way round.
"""
