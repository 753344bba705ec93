"""Everything MLflow: study and trial runs, Pareto tags and plots, promotion, plug-and-play use.

Modules (none is imported here, so importing the package does not import MLflow):

- ``store``: tracking URIs (absolute, per work folder), connecting once and failing fast.
- ``runs``: :class:`~aam_search.tracking.runs.StudyTracker`, a tuner callback (built by the CLI).
- ``mlflow_calls``: the plain MLflow client calls the tracker makes (batched logging, ...).
- ``plots``: the Pareto front (interactive HTML, PNG), hypervolume and trial tables.
- ``promote``: choose a trial, test it on held-out data, register it with an alias.
- ``pyfunc`` / ``pyfunc_code``: the registered model (MLflow "models from code").
- ``adapter``: :func:`~aam_search.tracking.adapter.load_adapter` and features-file anonymization.
- ``ui``: the ``mlflow ui`` command for a work folder; ``commands``: the CLI subcommands.

The library is imported as ``mlflow``; this package is ``tracking`` so it never shadows it.
"""
