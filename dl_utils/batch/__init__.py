"""Many sources, one command: ``dl-utils batch`` (issue 16).

:mod:`.plan` turns inputs or a manifest into :class:`~.plan.BatchSource` rows, :mod:`.options` holds
what every worker needs (:class:`~.options.BatchOptions`), :mod:`.worker` runs one source through the
``annotate`` code path (:func:`~.worker.run_source`), :mod:`.executors` runs many of them (a local
process pool; Ray in :mod:`.ray_executor`) and :mod:`.run` records the results. Importing this
package needs neither torch nor Ray.
"""
