"""The run report: what every stage of a run directory produced, in one Markdown page, one self-contained HTML file
(plots embedded), a JSON summary of the key numbers, and a model card for the final model.

- `vikhr.report.run`: `collect` (read every stage's outputs and the manifest), `write_plots`, `markdown`, `summary`.
- `vikhr.report.html`: the Markdown subset the report uses -> one HTML file with its images as data: URIs.
- `vikhr.report.card`: the Hugging Face model card (README.md with YAML front matter) of the final model.

The `report` stage (`vikhr.stages.report`) runs them after the other stages; each section copes with a stage that
did not run.
"""
