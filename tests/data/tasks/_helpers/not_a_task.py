"""The loader must skip folders that start with an underscore, so importing this file is a bug."""

raise RuntimeError("tests/data/tasks/_helpers/not_a_task.py must not be loaded as a task")
