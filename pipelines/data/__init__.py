"""Every input the pipelines read, one concern a module: where data comes from and each file format (``sources``),
token streams and pretraining examples (``tokens``), labelled tables (``tables``), instruction records and their
template (``instructions``), batch collates (``collates``) and text from stdin (``stdin``).

Every problem a user can cause is raised as :class:`~pipelines.errors.UserError` with one line that names the
problem, the file or record, and what to do.
"""
