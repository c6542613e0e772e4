"""The migration's phases, one module each, every one working through a `MigrationContext`.

`workflows/migration.py` keeps what is the workflow's own (run, the operator's messages, the undo);
each phase here is the application logic of one row of DESIGN §3's table. They import activities
only to reference them (`imports_passed_through`) and do no I/O themselves.
"""
