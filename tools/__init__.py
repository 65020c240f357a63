"""The suite's own tools (no experiment imports them): ``python -m tools.<name>``.

* ``tools.summary``  the end-of-run table that ``run_all.sh`` prints
* ``tools.compare``  result folders from different machines or settings side by side
* ``tools.report``   the Markdown report of a results folder (results/REPORT.md)
* ``tools.gate``     reference-normalised benchmark figures (information for comparing machines)
* ``tools.bench_ab`` the same-run A/B timing gate against the blessed commit (CI's pass/fail)
"""
