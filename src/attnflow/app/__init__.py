"""The application layer of attnflow: the ``attnflow`` command line and its run directories.

Built on the library (``attnflow`` and its subpackages), which never imports it:

* :mod:`~attnflow.app.config`: TOML run configurations, validated strictly;
* :mod:`~attnflow.app.build`: the library objects a configuration describes, built in one place;
* :mod:`~attnflow.app.runner`: executes a configuration into a run directory;
* :mod:`~attnflow.app.sweep`: the points of a sweep and their table ``summary.csv``;
* :mod:`~attnflow.app.checkpoint`: checkpoint files (write, read, list, the newest);
* :mod:`~attnflow.app.figures`: the summary figure of a run (matplotlib);
* :mod:`~attnflow.app.logs`: rank-aware logging and the progress bar;
* :mod:`~attnflow.app.cli`: ``attnflow run | sweep | mesh | info``.

Importing this package imports none of them.
"""

__all__: list[str] = []
