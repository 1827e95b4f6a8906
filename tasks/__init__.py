"""Built-in task runners, installed as the `kvl_tasks` package and registered under the `kvl.tasks`
entry-point group in pyproject.toml, exactly like third-party plugins."""
