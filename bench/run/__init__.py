"""Running a suite, split by job.

- ``tasks``: the picklable unit of work (:class:`GroupTask`) and the events it reports.
- ``stages``: building, caching and training the models a group shares (dense
  baseline, a "train" method's own model) and the context a method sees.
- ``pipeline``: one cell, compress -> fine-tune -> evaluate -> measure, and its record.
- ``worker``: runs the cells of one group inside whatever process an executor chose.
- ``driver``: one ``run``: claims groups, feeds an executor, times pending cells.
- ``executors``: where groups run (serial, local worker processes, Ray); each
  hands a :class:`GroupTask` to ``worker.execute_group`` and passes its events back.
- ``plan``: grouping, cell states and the dry run.

Imports flow one way: ``driver`` -> ``executors`` -> ``worker`` -> ``pipeline`` ->
``stages``, with ``tasks`` below them all; nothing here imports the reports, and
nothing outside ``driver`` imports ``executors``. The package itself re-exports
nothing, so an executor importing ``worker`` never pulls in the driver.
"""
